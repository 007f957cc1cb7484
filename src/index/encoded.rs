//! PURE. `/names` and `/versions` payloads kept encoded, one fragment per
//! package, so a change of one package encodes that package's entry and
//! copies the others' bytes instead of re-encoding the whole repository (at
//! hex.pm scale, 21,000 entries and 256,000 version strings per publish).
//!
//! Why concatenating fragments gives exactly `encode_to_vec()` of the
//! decoded message: `Names` and `Versions` are both
//! `{ repeated Package packages = 1; required string repository = 2; }`.
//! prost emits fields in tag order, a repeated message field as one
//! (key, length, body) per element in list order, and a proto2 required
//! string always, even empty. So the message is each entry's (key 1, length,
//! body) followed by (key 2, length, repository). The tests check it against
//! prost for every edit a publish makes.

use std::marker::PhantomData;

use prost::Message;

use crate::registry::proto::{names, versions};

/// Key of field 1 (`packages`), wire type 2 (length-delimited): `1 << 3 | 2`.
const PACKAGES_KEY: u8 = 0x0a;
/// Key of field 2 (`repository`), wire type 2 (length-delimited): `2 << 3 | 2`.
const REPOSITORY_KEY: u8 = 0x12;

/// One package entry of an index file.
pub trait Entry: Message + Default {
    /// The package's name: what the list is ordered and searched by.
    fn name(&self) -> &str;
}

impl Entry for names::Package {
    fn name(&self) -> &str {
        &self.name
    }
}

impl Entry for versions::Package {
    fn name(&self) -> &str {
        &self.name
    }
}

/// A decoded index message taken apart into its repository and entries.
pub trait Listing {
    /// Its entry type.
    type Entry: Entry;
    /// The repository and the entries, in the message's order.
    fn into_parts(self) -> (String, Vec<Self::Entry>);
}

impl Listing for names::Names {
    type Entry = names::Package;
    fn into_parts(self) -> (String, Vec<names::Package>) {
        (self.repository, self.packages)
    }
}

impl Listing for versions::Versions {
    type Entry = versions::Package;
    fn into_parts(self) -> (String, Vec<versions::Package>) {
        (self.repository, self.packages)
    }
}

/// A package's name and its encoded entry (key, length, body).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fragment {
    name: Box<str>,
    bytes: Box<[u8]>,
}

/// An index payload (`/names` or `/versions`) as encoded fragments, one per
/// package, in the message's order (by name, for every file we write).
/// Holds no decoded entries: the fragments are several times smaller than
/// the decoded strings they stand for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedIndex<E> {
    entries: Vec<Fragment>,
    /// Sum of the fragments' lengths, to size the encoded payload at once.
    entry_bytes: usize,
    /// The encoded `repository` field, which ends the payload.
    tail: Box<[u8]>,
    repository: String,
    entry: PhantomData<fn() -> E>,
}

/// `/names` as encoded fragments.
pub type EncodedNames = EncodedIndex<names::Package>;
/// `/versions` as encoded fragments.
pub type EncodedVersions = EncodedIndex<versions::Package>;

impl<E: Entry> EncodedIndex<E> {
    /// An index of `repository` listing no package.
    pub fn new(repository: &str) -> Self {
        Self::from_parts(repository.to_owned(), Vec::new())
    }

    /// The index listing `entries` in their order.
    pub fn from_parts(repository: String, entries: Vec<E>) -> Self {
        let mut tail = vec![REPOSITORY_KEY];
        push_varint(&mut tail, repository.len());
        tail.extend_from_slice(repository.as_bytes());
        let entries: Vec<Fragment> = entries.iter().map(fragment).collect();
        Self {
            entry_bytes: entries.iter().map(|f| f.bytes.len()).sum(),
            entries,
            tail: tail.into(),
            repository,
            entry: PhantomData,
        }
    }

    /// The repository the index belongs to.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// How many packages it lists.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether it lists no package.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entry of package `name`, decoded (`None`: not listed).
    pub fn get(&self, name: &str) -> Result<Option<E>, prost::DecodeError> {
        let Ok(i) = self.find(name) else {
            return Ok(None);
        };
        // Skip the key: the rest is the length-delimited body.
        E::decode_length_delimited(&self.entries[i].bytes[1..]).map(Some)
    }

    /// Replaces the entry of the same name, or inserts `entry` where the
    /// name order puts it.
    pub fn put(&mut self, entry: &E) {
        let new = fragment(entry);
        self.entry_bytes += new.bytes.len();
        match self.find(entry.name()) {
            Ok(i) => {
                let old = std::mem::replace(&mut self.entries[i], new);
                self.entry_bytes -= old.bytes.len();
            }
            Err(i) => self.entries.insert(i, new),
        }
    }

    /// Takes package `name` out; false when it was not listed.
    pub fn remove(&mut self, name: &str) -> bool {
        let Ok(i) = self.find(name) else {
            return false;
        };
        let old = self.entries.remove(i);
        self.entry_bytes -= old.bytes.len();
        true
    }

    /// The payload: byte for byte what prost encodes for the message.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.entry_bytes + self.tail.len());
        for f in &self.entries {
            out.extend_from_slice(&f.bytes);
        }
        out.extend_from_slice(&self.tail);
        out
    }

    /// Binary search by name, as the list is kept sorted by name.
    fn find(&self, name: &str) -> Result<usize, usize> {
        self.entries.binary_search_by(|f| (*f.name).cmp(name))
    }
}

impl<L: Listing> From<L> for EncodedIndex<L::Entry> {
    fn from(message: L) -> Self {
        let (repository, entries) = message.into_parts();
        Self::from_parts(repository, entries)
    }
}

/// `entry` as one element of field 1: key, body length, body.
fn fragment<E: Entry>(entry: &E) -> Fragment {
    let body = entry.encode_to_vec();
    let mut bytes = Vec::with_capacity(1 + 5 + body.len());
    bytes.push(PACKAGES_KEY);
    push_varint(&mut bytes, body.len());
    bytes.extend_from_slice(&body);
    Fragment {
        name: entry.name().into(),
        bytes: bytes.into(),
    }
}

/// Appends `n` as a protobuf varint (seven bits a byte, low first).
fn push_varint(buf: &mut Vec<u8>, n: usize) {
    let mut n = n as u64;
    while n >= 0x80 {
        buf.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    buf.push(n as u8);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry(name: &str, versions: &[&str], retired: &[i32]) -> versions::Package {
        versions::Package {
            name: name.into(),
            versions: versions.iter().map(|v| v.to_string()).collect(),
            retired: retired.to_vec(),
            with_advisories: Vec::new(),
        }
    }

    fn name(name: &str, secs: Option<i64>) -> names::Package {
        names::Package {
            name: name.into(),
            updated_at: secs.map(|seconds| names::Timestamp { seconds, nanos: 0 }),
        }
    }

    /// The edit as the decoded message took it before: binary search by
    /// name, then replace, insert or remove in the list.
    fn model_put<E: Entry + Clone>(list: &mut Vec<E>, e: &E) {
        match list.binary_search_by(|p| p.name().cmp(e.name())) {
            Ok(i) => list[i] = e.clone(),
            Err(i) => list.insert(i, e.clone()),
        }
    }

    fn model_remove<E: Entry>(list: &mut Vec<E>, name: &str) {
        if let Ok(i) = list.binary_search_by(|p| p.name().cmp(name)) {
            list.remove(i);
        }
    }

    fn versions_of(repository: &str, packages: &[versions::Package]) -> versions::Versions {
        versions::Versions {
            repository: repository.into(),
            packages: packages.to_vec(),
        }
    }

    #[test]
    fn empty_index_encodes_as_prost_does() {
        for repo in ["", "acme", &"r".repeat(300)] {
            let spliced = EncodedVersions::new(repo);
            assert_eq!(spliced.encode(), versions_of(repo, &[]).encode_to_vec());
            let names = EncodedNames::new(repo);
            let full = names::Names {
                repository: repo.into(),
                packages: Vec::new(),
            };
            assert_eq!(names.encode(), full.encode_to_vec());
            assert!(spliced.is_empty() && spliced.repository() == repo);
        }
    }

    #[test]
    fn versions_splice_equals_full_encode() {
        let mut model = vec![entry("m", &["1.0.0"], &[])];
        let mut spliced = EncodedVersions::from(versions_of("acme", &model));
        let check = |spliced: &EncodedVersions, model: &[versions::Package]| {
            assert_eq!(spliced.encode(), versions_of("acme", model).encode_to_vec());
            assert_eq!(spliced.len(), model.len());
        };
        // A long entry: its length takes two varint bytes.
        let many: Vec<String> = (0..40).map(|i| format!("1.{i}.0")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let edits = [
            entry("a", &["0.1.0"], &[]),           // insert first
            entry("z", &many, &[0, 3, 39]),        // insert last, long
            entry("n", &["2.0.0", "2.1.0"], &[1]), // insert in the middle
            entry("m", &["1.0.0", "1.1.0"], &[0]), // replace
            entry("a", &[], &[]),                  // replace first, no versions
            entry("z", &["9.9.9"], &[]),           // replace last, shorter
        ];
        for e in &edits {
            spliced.put(e);
            model_put(&mut model, e);
            check(&spliced, &model);
        }
        assert_eq!(spliced.get("n").unwrap(), Some(edits[2].clone()));
        assert_eq!(spliced.get("absent").unwrap(), None);
        for gone in ["z", "a", "absent", "n", "m"] {
            // last, first, not listed, middle, the only one left
            assert_eq!(spliced.remove(gone), gone != "absent");
            model_remove(&mut model, gone);
            check(&spliced, &model);
        }
        assert!(spliced.is_empty());
    }

    #[test]
    fn names_splice_equals_full_encode() {
        let full = |packages: &[names::Package]| {
            names::Names {
                repository: "acme".into(),
                packages: packages.to_vec(),
            }
            .encode_to_vec()
        };
        let mut model = Vec::new();
        let mut spliced = EncodedNames::new("acme");
        for e in [
            name("b", Some(2)),
            name("a", Some(1)),
            name("c", None),
            name("b", Some(-5)),
            name("c", Some(i64::MAX)),
        ] {
            spliced.put(&e);
            model_put(&mut model, &e);
            assert_eq!(spliced.encode(), full(&model));
        }
        assert_eq!(spliced.get("b").unwrap(), Some(name("b", Some(-5))));
        spliced.remove("a");
        model_remove(&mut model, "a");
        assert_eq!(spliced.encode(), full(&model));
    }

    /// One edit of the property test: put an entry, or remove a name.
    #[derive(Debug, Clone)]
    enum Edit {
        Put(versions::Package),
        Remove(String),
    }

    fn package() -> impl Strategy<Value = versions::Package> {
        (
            "[a-e]{1,3}",
            proptest::collection::vec("[0-9a-z.+-]{0,12}", 0..24),
            proptest::collection::vec(any::<i32>(), 0..4),
            proptest::collection::vec(0..100i32, 0..4),
        )
            .prop_map(
                |(name, versions, retired, with_advisories)| versions::Package {
                    name,
                    versions,
                    retired,
                    with_advisories,
                },
            )
    }

    proptest::proptest! {
        #![proptest_config(crate::fuzz::config())]

        /// Any sequence of puts and removes on any starting list gives the
        /// bytes prost encodes for the same edits on the decoded message,
        /// and those bytes decode back to it.
        #[test]
        fn fuzz_splice_equals_full_encode(
            start in proptest::collection::vec(package(), 0..12),
            edits in proptest::collection::vec(prop_oneof![
                package().prop_map(Edit::Put),
                "[a-e]{1,3}".prop_map(Edit::Remove),
            ], 0..16),
            repository in "[a-z_]{0,20}",
        ) {
            let mut model: Vec<versions::Package> = Vec::new();
            for e in &start {
                model_put(&mut model, e);
            }
            let mut spliced = EncodedVersions::from(versions_of(&repository, &model));
            for edit in &edits {
                match edit {
                    Edit::Put(e) => {
                        spliced.put(e);
                        model_put(&mut model, e);
                    }
                    Edit::Remove(n) => {
                        spliced.remove(n);
                        model_remove(&mut model, n);
                    }
                }
                let full = versions_of(&repository, &model);
                let bytes = spliced.encode();
                prop_assert_eq!(&bytes, &full.encode_to_vec());
                prop_assert_eq!(versions::Versions::decode(&bytes[..]).unwrap(), full);
            }
        }
    }
}
