//! Changes made on this machine rather than over HTTP (the import folder):
//! the same writer and the same one-at-a-time gate as the API.

use std::sync::Arc;

use super::ApiState;
use crate::hosted::db::{self as hdb, ReleaseRow};
use crate::hosted::writer::{Actor, Change, HostedError, Outcome};

impl ApiState {
    /// Applies `change` to repository `repo` as local user `user`, with
    /// owner checks bypassed (the operator controls the machine).
    pub async fn apply_local(
        self: &Arc<Self>,
        repo: &str,
        change: Change,
        user: &str,
    ) -> Result<Outcome, HostedError> {
        let _one_at_a_time = self.changes.lock().await;
        let (writer, config, repo, actor) = (
            Arc::clone(&self.writer),
            self.config(),
            repo.to_owned(),
            Actor {
                user: user.to_owned(),
                token: None,
                client: None,
                admin: true,
            },
        );
        tokio::task::spawn_blocking(move || writer.apply(&config, &repo, change, &actor))
            .await
            .map_err(HostedError::from)?
    }

    /// The stored release, if any (to recognise a tarball published before).
    pub async fn release(
        &self,
        repo: &str,
        package: &str,
        version: &str,
    ) -> Result<Option<ReleaseRow>, HostedError> {
        let (r, p, v) = (repo.to_owned(), package.to_owned(), version.to_owned());
        self.db
            .call(move |c| hdb::release(c, &r, &p, &v))
            .await
            .map_err(HostedError::from)
    }
}
