//! The one way into the writer. Whoever asks for a hosted change (the API,
//! the import folder) goes through [`Publisher::apply`]: changes wait their
//! turn here, without blocking a thread, and each runs on the blocking pool
//! while the writer holds the data directory's lock.

use std::sync::{Arc, RwLock};

use super::db::{self as hdb, ReleaseRow};
use super::writer::{Actor, Change, HostedError, Outcome, Writer};
use crate::config::Config;
use crate::store::{Db, Store};

/// Told before and after a change patches the served generation in place:
/// `serve`'s response cache, which must not keep a file the change is
/// replacing (see `server::cache`).
pub trait ChangeWatch: Send + Sync + std::fmt::Debug {
    /// A change is about to begin.
    fn begin_change(&self);
    /// The change ended, done or failed.
    fn end_change(&self);
}

/// [`ChangeWatch::begin_change`] now, [`ChangeWatch::end_change`] when
/// dropped, so a failed or panicking change ends too.
struct Bracket(Option<Arc<dyn ChangeWatch>>);

impl Bracket {
    fn new(watch: Option<Arc<dyn ChangeWatch>>) -> Self {
        if let Some(w) = &watch {
            w.begin_change();
        }
        Self(watch)
    }
}

impl Drop for Bracket {
    fn drop(&mut self) {
        if let Some(w) = &self.0 {
            w.end_change();
        }
    }
}

/// The writer with its queue and the configuration in force.
#[derive(Debug)]
pub struct Publisher {
    writer: Arc<Writer>,
    db: Db,
    config: RwLock<Arc<Config>>,
    /// Changes one at a time (the writer itself blocks).
    turn: tokio::sync::Mutex<()>,
    /// The catalog each change is put into, once `serve` has opened it.
    catalog: std::sync::OnceLock<crate::catalog::Catalog>,
    /// Who is told about each change, once `serve` has set it up.
    watch: std::sync::OnceLock<Arc<dyn ChangeWatch>>,
}

impl Publisher {
    /// Opens the data directory of `config`, finishes a hosted change a
    /// crash interrupted, and starts decoding the index in the background.
    /// Blocking.
    pub fn open(config: Config) -> Result<Arc<Self>, HostedError> {
        let store = Store::open(&config.data_dir)?;
        let db = Db::open(&config.data_dir)?;
        let writer = Writer::new(store, db.clone());
        writer.recover(&config);
        let writer = Arc::new(writer);
        // Off the start path: at hex.pm scale this is a second of decoding.
        let (warming, warm_config) = (Arc::clone(&writer), config.clone());
        std::thread::spawn(move || warming.warm(&warm_config));
        Ok(Arc::new(Self {
            writer,
            db,
            config: RwLock::new(Arc::new(config)),
            turn: tokio::sync::Mutex::new(()),
            catalog: std::sync::OnceLock::new(),
            watch: std::sync::OnceLock::new(),
        }))
    }

    /// Tells `watch` about every later change (once; `serve` does it).
    pub fn watch_changes(&self, watch: Arc<dyn ChangeWatch>) {
        let _ = self.watch.set(watch);
    }

    /// The configuration now in force.
    pub fn config(&self) -> Arc<Config> {
        Arc::clone(&self.config.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Swaps in a reloaded configuration; the next change uses it.
    pub fn set_config(&self, config: Config) {
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(config);
    }

    /// The state database.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Applies `change` to repository `repo` for `actor`, after every change
    /// asked for before it, with the configuration `config`.
    pub async fn apply(
        &self,
        config: Arc<Config>,
        repo: &str,
        change: Change,
        actor: Actor,
    ) -> Result<Outcome, HostedError> {
        let _turn = self.turn.lock().await;
        let (writer, repo) = (Arc::clone(&self.writer), repo.to_owned());
        let (catalog, db) = (self.catalog.get().cloned(), self.db.clone());
        let watch = self.watch.get().cloned();
        tokio::task::spawn_blocking(move || {
            let name = change.package().to_owned();
            let outcome = {
                let _bracket = Bracket::new(watch);
                writer.apply(&config, &repo, change, &actor)?
            };
            // Under the same turn, so the catalog takes changes in order;
            // it is derived data: a failure is logged, the change stands.
            if let Some(catalog) = catalog
                && let Err(e) = super::catalog::follow(&catalog, &db, &repo, &name)
            {
                tracing::warn!(repository = %repo, package = %name, "catalog not updated: {e}; `hexmirror catalog rebuild` catches up");
            }
            Ok(outcome)
        })
        .await?
    }

    /// Renames organization `old` to `new` (see
    /// [`Writer::rename_repository`]) after every change asked for before
    /// it, and moves its packages and counts in the catalog. Returns the
    /// generation that shows it.
    pub async fn rename_repository(
        &self,
        config: Arc<Config>,
        old: &str,
        new: &str,
        audit: hdb::AuditEntry,
    ) -> Result<u64, HostedError> {
        let _turn = self.turn.lock().await;
        let writer = Arc::clone(&self.writer);
        let (old, new) = (old.to_owned(), new.to_owned());
        let catalog = self.catalog.get().cloned();
        let watch = self.watch.get().cloned();
        tokio::task::spawn_blocking(move || {
            let generation = {
                let _bracket = Bracket::new(watch);
                writer.rename_repository(&config, &old, &new, &audit)?
            };
            // The rows are the same but for the repository's name (a
            // dependency on the organization itself is recorded without
            // one), so moving them is the whole of the catalog's change.
            if let Some(catalog) = catalog {
                let moved = catalog.call_blocking(|c| {
                    let tx = c.transaction()?;
                    crate::catalog::rename_repository(&tx, &old, &new)?;
                    tx.commit()
                });
                if let Err(e) = moved {
                    tracing::warn!(from = %old, to = %new, "catalog not updated: {e}; `hexmirror catalog rebuild` catches up");
                }
            }
            Ok(generation)
        })
        .await?
    }

    /// Puts every later change into `catalog`, without filling it.
    pub fn attach_catalog(&self, catalog: crate::catalog::Catalog) {
        let _ = self.catalog.set(catalog);
    }

    /// Puts every later change into `catalog`, and fills it with every
    /// hosted package now (blocking; at start).
    pub fn follow_into(
        &self,
        catalog: crate::catalog::Catalog,
    ) -> Result<usize, super::catalog::HostedCatalogError> {
        let filled = super::catalog::refill(&catalog, &self.db, &self.config());
        // Attached even when the fill failed: later changes still go in.
        self.attach_catalog(catalog);
        filled
    }

    /// The stored release, if any.
    pub async fn release(
        &self,
        repo: &str,
        package: &str,
        version: &str,
    ) -> Result<Option<ReleaseRow>, HostedError> {
        let (r, p, v) = (repo.to_owned(), package.to_owned(), version.to_owned());
        Ok(self.db.call(move |c| hdb::release(c, &r, &p, &v)).await?)
    }
}
