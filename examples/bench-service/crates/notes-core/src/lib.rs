//! Notes, their validation and an in-memory store. Ids are UUIDv5 of the content, so the same
//! note always gets the same id and the self-test prints the same lines every run.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use regex::Regex;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// Namespace of note ids (UUIDv5).
const NOTES_NAMESPACE: Uuid = Uuid::from_u128(0x6ba7_b814_9dad_11d1_80b4_00c0_4fd4_30c8);

/// What a client sends to create a note.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct NewNote {
    pub title: String,
    pub body: String,
    #[serde(default)]
    pub tags: Vec<String>,
}

/// A stored note.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct Note {
    pub id: Uuid,
    pub title: String,
    pub body: String,
    pub tags: Vec<String>,
    /// SHA-256 of the body, hex.
    pub digest: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NoteError {
    #[error("title must be 1 to {max} characters, got {got}")]
    BadTitle { max: usize, got: usize },
    #[error("tag {0:?} is not lowercase letters, digits and dashes")]
    BadTag(String),
    #[error("note {0} not found")]
    NotFound(Uuid),
    #[error("note {0} already exists")]
    Duplicate(Uuid),
}

/// The id of a note.
pub type NoteId = Uuid;

pub const MAX_TITLE: usize = 80;

fn tag_pattern() -> &'static Regex {
    static TAG: OnceLock<Regex> = OnceLock::new();
    TAG.get_or_init(|| Regex::new(r"^[a-z0-9][a-z0-9-]{0,31}$").expect("a valid constant regex"))
}

impl NewNote {
    /// Checks the note and derives its id and digest.
    pub fn validate(self) -> Result<Note, NoteError> {
        let len = self.title.chars().count();
        if len == 0 || len > MAX_TITLE {
            return Err(NoteError::BadTitle {
                max: MAX_TITLE,
                got: len,
            });
        }
        if let Some(bad) = self.tags.iter().find(|t| !tag_pattern().is_match(t)) {
            return Err(NoteError::BadTag(bad.clone()));
        }
        let digest = hex::encode(Sha256::digest(self.body.as_bytes()));
        let id = Uuid::new_v5(
            &NOTES_NAMESPACE,
            format!("{}\n{}", self.title, digest).as_bytes(),
        );
        let mut tags = self.tags;
        tags.sort();
        tags.dedup();
        Ok(Note {
            id,
            title: self.title,
            body: self.body,
            tags,
            digest,
        })
    }
}

/// Notes by id, in id order.
#[derive(Debug, Default)]
pub struct Store {
    notes: BTreeMap<Uuid, Note>,
}

impl Store {
    pub fn insert(&mut self, new: NewNote) -> Result<Note, NoteError> {
        let note = new.validate()?;
        if self.notes.contains_key(&note.id) {
            return Err(NoteError::Duplicate(note.id));
        }
        self.notes.insert(note.id, note.clone());
        Ok(note)
    }

    pub fn get(&self, id: Uuid) -> Result<&Note, NoteError> {
        self.notes.get(&id).ok_or(NoteError::NotFound(id))
    }

    /// Notes carrying `tag` (all notes if `None`).
    pub fn list(&self, tag: Option<&str>) -> Vec<&Note> {
        self.notes
            .values()
            .filter(|n| tag.is_none_or(|t| n.tags.iter().any(|x| x == t)))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.notes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.notes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_tags_checked() {
        let n = NewNote {
            title: "a".into(),
            body: "b".into(),
            tags: vec!["x".into(), "x".into()],
        };
        let a = n.clone().validate().unwrap();
        assert_eq!(a.id, n.validate().unwrap().id);
        assert_eq!(a.tags, ["x"]);
        let bad = NewNote {
            title: "a".into(),
            body: "b".into(),
            tags: vec!["Bad Tag".into()],
        };
        assert_eq!(bad.validate(), Err(NoteError::BadTag("Bad Tag".into())));
    }
}
