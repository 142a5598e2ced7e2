//! The identity mapping saved next to the segments, so that a restart does not rebuild it from the metadata store.
//!
//! Rebuilding it meant reading every distinct id from the store and looking each one up in the distinct-id
//! dictionary the segments had just filled: about a second for 1.3M distinct ids, during which no query can be
//! answered (a person-level answer needs every merge). Saved instead, per project:
//!
//! - `identity/p<project>.dids`: the distinct-id dictionary in index order, append-only (`u32` length, UTF-8
//!   bytes) — the dictionary only grows, so a save appends the values added since the last one;
//! - `identity/map`, for all projects, rewritten whole (temporary file, fsync, rename): the 'identity' sequence
//!   number of the metadata store it covers, and per project the number of dictionary values and their byte length
//!   in the `.dids` file, the person of each distinct id (dense), the union-find parents of the dense persons and
//!   their store person ids (a [`sidecar`] file: checksummed, replaced atomically).
//!
//! [`EventTables::open`](super::EventTables::open) loads the saved mapping *before* the segments, so that loading
//! the segments only looks values up, and the caller then reads from the store only the mapping rows changed after
//! the saved sequence number ([`EventTables::identity_seq`](super::EventTables::identity_seq)). The saved mapping
//! is a snapshot taken under the state lock together with the highest sequence number the change feed had applied,
//! so it holds every change numbered up to it. Anything unreadable or inconsistent (a torn `.dids` tail, a checksum
//! mismatch, a distinct id twice) discards the saved mapping: the caller then loads the whole mapping from the
//! store, as on a first start, and the next save writes the files afresh.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{Project, NO_PERSON};
use crate::{sidecar, EngineError};

const MAGIC: &[u8; 8] = b"FWIDMAP1";
const DIR: &str = "identity";
const MAP: &str = "map";

/// What the `.dids` file of a project holds, as recorded in the last map written or read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct DidsFile {
    pub values: u64,
    pub bytes: u64,
}

/// The files as last written (or read): where the next save appends.
#[derive(Debug, Default)]
pub(super) struct Saved {
    pub files: HashMap<i64, DidsFile>,
    /// Sequence number and per-project versions of the last save, to skip saves that would change nothing.
    pub last: Option<(i64, Vec<(i64, u64)>)>,
}

impl Saved {
    /// Whether a save of `copies` at `seq` would write what the last one did.
    pub fn unchanged(&self, seq: i64, copies: &[ProjectCopy]) -> bool {
        self.last.as_ref().is_some_and(|(s, versions)| {
            *s == seq
                && versions.len() == copies.len()
                && versions
                    .iter()
                    .zip(copies)
                    .all(|(&(id, v), c)| id == c.project_id && v == c.version)
        })
    }
}

/// One project's part of a save, copied under the state lock.
pub(super) struct ProjectCopy {
    pub project_id: i64,
    /// The dictionary values past those the `.dids` file holds (`Arc` clones).
    pub new_dids: Vec<Arc<str>>,
    pub did_person: Vec<u32>,
    pub parent: Vec<u32>,
    pub person_ids: Arc<Vec<i64>>,
    pub version: u64,
}

impl ProjectCopy {
    pub fn of(project_id: i64, p: &Project, saved: &Saved) -> ProjectCopy {
        let known = saved
            .files
            .get(&project_id)
            .map_or(0, |f| f.values as usize);
        ProjectCopy {
            project_id,
            new_dids: p.dids.values.get(known..).unwrap_or_default().to_vec(),
            did_person: p.did_person.clone(),
            parent: p.parent.clone(),
            person_ids: p.person_ids.clone(),
            version: p.version,
        }
    }
}

fn dir_of(root: &Path) -> PathBuf {
    root.join(DIR)
}

fn dids_path(root: &Path, project_id: i64) -> PathBuf {
    dir_of(root).join(format!("p{project_id}.dids"))
}

fn io(context: String) -> impl FnOnce(std::io::Error) -> EngineError {
    move |e| EngineError::io(context, e)
}

/// Writes `copies` with sequence number `seq`, appending new distinct ids to the `.dids` files, then the map.
/// On success `saved` describes the new files; on failure it is left as it was (the next save appends at the same
/// offsets, truncating whatever a failed append left).
pub(super) fn save(
    root: &Path,
    seq: i64,
    copies: &[ProjectCopy],
    saved: &mut Saved,
) -> Result<(), EngineError> {
    let dir = dir_of(root);
    std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
    let mut files = saved.files.clone();
    for c in copies {
        let known = files.get(&c.project_id).copied().unwrap_or_default();
        if known.values as usize + c.new_dids.len() != c.did_person.len() {
            return Err(EngineError::io(
                format!("saving the identity mapping of project {}", c.project_id),
                std::io::Error::other("the distinct-id dictionary does not match the saved file"),
            ));
        }
        if c.new_dids.is_empty() {
            continue;
        }
        let path = dids_path(root, c.project_id);
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(&path)
            .map_err(io(format!("opening {}", path.display())))?;
        f.set_len(known.bytes)
            .map_err(io(format!("truncating {}", path.display())))?;
        f.seek(SeekFrom::Start(known.bytes))
            .map_err(io(format!("seeking {}", path.display())))?;
        let mut buf = Vec::new();
        for v in &c.new_dids {
            buf.extend_from_slice(&(v.len() as u32).to_le_bytes());
            buf.extend_from_slice(v.as_bytes());
        }
        f.write_all(&buf)
            .and_then(|()| f.sync_data())
            .map_err(io(format!("writing {}", path.display())))?;
        files.insert(
            c.project_id,
            DidsFile {
                values: c.did_person.len() as u64,
                bytes: known.bytes + buf.len() as u64,
            },
        );
    }

    let mut out = sidecar::Writer::new(MAGIC);
    out.i64(seq);
    out.u64(copies.len() as u64);
    for c in copies {
        let file = files.get(&c.project_id).copied().unwrap_or_default();
        out.i64(c.project_id);
        out.u64(file.values);
        out.u64(file.bytes);
        out.u64(c.parent.len() as u64);
        // Only the distinct ids the `.dids` file holds (all of them, see above).
        for &p in &c.did_person[..file.values as usize] {
            out.u32(p);
        }
        for &p in &c.parent {
            out.u32(p);
        }
        for &p in c.person_ids.iter() {
            out.i64(p);
        }
    }
    let path = dir.join(MAP);
    sidecar::write(&path, out.bytes).map_err(io(format!("writing {}", path.display())))?;
    saved.files = files;
    saved.last = Some((
        seq,
        copies.iter().map(|c| (c.project_id, c.version)).collect(),
    ));
    Ok(())
}

/// Deletes a project's `.dids` file and the map (the next start then loads the mapping from the store).
pub(super) fn forget(root: &Path, project_id: i64) {
    let _ = std::fs::remove_file(dids_path(root, project_id));
    let _ = std::fs::remove_file(dir_of(root).join(MAP));
}

/// Loads the saved mapping into `projects` (empty projects are created). `Ok(None)`: nothing saved.
/// `Err(reason)`: the saved mapping is unusable; `projects` may hold part of it and must be discarded.
pub(super) fn load(
    root: &Path,
    projects: &mut HashMap<i64, Project>,
) -> Result<Option<(i64, Saved)>, String> {
    let path = dir_of(root).join(MAP);
    let Some(body) = sidecar::read(&path, MAGIC)? else {
        return Ok(None);
    };
    let mut c = sidecar::Reader::new(&body);
    let seq = c.i64()?;
    let n_projects = c.count(32)?;
    let mut saved = Saved::default();
    for _ in 0..n_projects {
        let project_id = c.i64()?;
        let values = c.u64()? as usize;
        let dids_bytes = c.u64()?;
        let dense = c.u64()? as usize;
        let did_person = c.u32s(values)?;
        let parent = c.u32s(dense)?;
        let person_ids = c.i64s(dense)?;
        if did_person
            .iter()
            .any(|&p| p != NO_PERSON && p as usize >= dense)
            || parent.iter().any(|&p| p as usize >= dense)
        {
            return Err(format!("project {project_id}: a person out of range"));
        }
        let project = projects.entry(project_id).or_default();
        if !project.dids.is_empty() || !project.parent.is_empty() {
            return Err(format!("project {project_id} listed twice"));
        }
        read_dids(root, project_id, values, dids_bytes, project)?;
        project.did_person = did_person;
        project.parent = parent;
        project.dense_of.reserve(dense);
        for (d, &id) in person_ids.iter().enumerate() {
            if id >= 0 && project.dense_of.insert(id, d as u32).is_some() {
                return Err(format!("project {project_id}: person {id} listed twice"));
            }
        }
        project.person_ids = Arc::new(person_ids);
        project.identity_dirty = true;
        project.version += 1;
        saved.files.insert(
            project_id,
            DidsFile {
                values: values as u64,
                bytes: dids_bytes,
            },
        );
    }
    if !c.is_empty() {
        return Err(format!("{}: trailing bytes", path.display()));
    }
    Ok(Some((seq, saved)))
}

/// Interns the first `values` distinct ids of the project's `.dids` file (its first `bytes` bytes; a longer file
/// has a tail from a save that did not complete, ignored).
fn read_dids(
    root: &Path,
    project_id: i64,
    values: usize,
    bytes: u64,
    project: &mut Project,
) -> Result<(), String> {
    let path = dids_path(root, project_id);
    let mut buf = Vec::new();
    std::fs::File::open(&path)
        .and_then(|f| f.take(bytes).read_to_end(&mut buf))
        .map_err(|e| format!("reading {}: {e}", path.display()))?;
    if buf.len() as u64 != bytes {
        return Err(format!("{} is shorter than its map says", path.display()));
    }
    project.dids.reserve(values);
    let mut rest = &buf[..];
    for i in 0..values {
        if rest.len() < 4 {
            return Err(format!("{}: truncated", path.display()));
        }
        let n = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let Some(v) = rest.get(4..4 + n) else {
            return Err(format!("{}: truncated", path.display()));
        };
        let v = std::str::from_utf8(v).map_err(|_| format!("{}: not UTF-8", path.display()))?;
        if project.dids.intern(v) as usize != i {
            return Err(format!("{}: a distinct id twice", path.display()));
        }
        rest = &rest[4 + n..];
    }
    if !rest.is_empty() {
        return Err(format!("{}: more bytes than distinct ids", path.display()));
    }
    Ok(())
}
