//! The protobuf form of notes (`notes.v1.Note`, `notes.v1.NoteList`), with prost's derive
//! instead of generated code so the build needs no protoc.

use bytes::Bytes;
use prost::Message;

#[derive(Clone, PartialEq, Message)]
pub struct NoteMsg {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(string, tag = "2")]
    pub title: String,
    #[prost(string, tag = "3")]
    pub body: String,
    #[prost(string, repeated, tag = "4")]
    pub tags: Vec<String>,
    #[prost(bytes = "bytes", tag = "5")]
    pub digest: Bytes,
}

#[derive(Clone, PartialEq, Message)]
pub struct NoteList {
    #[prost(message, repeated, tag = "1")]
    pub notes: Vec<NoteMsg>,
    #[prost(uint32, tag = "2")]
    pub total: u32,
}

impl From<&notes_core::Note> for NoteMsg {
    fn from(n: &notes_core::Note) -> Self {
        let digest = (0..n.digest.len())
            .step_by(2)
            .filter_map(|i| u8::from_str_radix(&n.digest[i..i + 2], 16).ok())
            .collect::<Vec<u8>>();
        NoteMsg {
            id: n.id.to_string(),
            title: n.title.clone(),
            body: n.body.clone(),
            tags: n.tags.clone(),
            digest: Bytes::from(digest),
        }
    }
}

/// Encodes a list of notes.
pub fn encode_list<'a>(notes: impl IntoIterator<Item = &'a notes_core::Note>) -> Vec<u8> {
    let notes: Vec<NoteMsg> = notes.into_iter().map(NoteMsg::from).collect();
    let total = u32::try_from(notes.len()).unwrap_or(u32::MAX);
    NoteList { notes, total }.encode_to_vec()
}

/// Decodes what [`encode_list`] wrote.
pub fn decode_list(bytes: &[u8]) -> Result<NoteList, prost::DecodeError> {
    NoteList::decode(bytes)
}
