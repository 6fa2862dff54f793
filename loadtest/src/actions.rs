//! REAPI Commands, Actions and input Directories for the execution scenarios, each encoded
//! once with its digest.

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use cas::Digest;

/// An encoded message and its digest.
#[derive(Clone, Debug)]
pub struct Blob {
    pub digest: Digest,
    pub data: Vec<u8>,
}

impl Blob {
    pub fn of(message: &impl prost::Message) -> Self {
        let data = message.encode_to_vec();
        Blob {
            digest: Digest::of(&data),
            data,
        }
    }

    pub fn pair(&self) -> (Digest, Vec<u8>) {
        (self.digest, self.data.clone())
    }
}

fn platform(props: &[(String, String)]) -> Option<reapi::Platform> {
    let mut properties: Vec<reapi::platform::Property> = props
        .iter()
        .map(|(name, value)| reapi::platform::Property {
            name: name.clone(),
            value: value.clone(),
        })
        .collect();
    // REAPI wants them sorted by name (then value).
    properties.sort_by(|a, b| (&a.name, &a.value).cmp(&(&b.name, &b.value)));
    (!properties.is_empty()).then_some(reapi::Platform { properties })
}

/// A Command running `args` with `PATH=/usr/bin:/bin`, producing `outputs`.
#[allow(deprecated)] // output_files: for REAPI 2.0 servers
pub fn command(args: &[String], outputs: &[&str]) -> Blob {
    let outputs: Vec<String> = outputs.iter().map(|s| s.to_string()).collect();
    Blob::of(&reapi::Command {
        arguments: args.to_vec(),
        environment_variables: vec![reapi::command::EnvironmentVariable {
            name: "PATH".into(),
            value: "/usr/bin:/bin".into(),
        }],
        // Both spellings: REAPI 2.1+ servers read output_paths, 2.0 servers output_files.
        output_files: outputs.clone(),
        output_paths: outputs,
        ..Default::default()
    })
}

/// An Action of `command` on `input_root`, made distinct by `salt`.
pub fn action(
    command: &Digest,
    input_root: &Digest,
    salt: &str,
    props: &[(String, String)],
) -> Blob {
    Blob::of(&reapi::Action {
        command_digest: Some(command.to_proto()),
        input_root_digest: Some(input_root.to_proto()),
        salt: salt.as_bytes().to_vec(),
        platform: platform(props),
        ..Default::default()
    })
}

/// A Directory holding `files` (name, digest); names are sorted as REAPI requires.
pub fn directory_of_files(files: &[(String, Digest)]) -> Blob {
    let mut nodes: Vec<reapi::FileNode> = files
        .iter()
        .map(|(name, d)| reapi::FileNode {
            name: name.clone(),
            digest: Some(d.to_proto()),
            ..Default::default()
        })
        .collect();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    Blob::of(&reapi::Directory {
        files: nodes,
        ..Default::default()
    })
}

/// A Directory holding one subdirectory `name`.
pub fn directory_with_subdir(name: &str, subdir: &Digest) -> Blob {
    Blob::of(&reapi::Directory {
        directories: vec![reapi::DirectoryNode {
            name: name.to_string(),
            digest: Some(subdir.to_proto()),
        }],
        ..Default::default()
    })
}

/// A small successful ActionResult: exit code 0, `stdout` inline, stamped by this tool.
pub fn cached_result(stdout: Vec<u8>) -> reapi::ActionResult {
    reapi::ActionResult {
        exit_code: 0,
        stdout_raw: stdout,
        execution_metadata: Some(reapi::ExecutedActionMetadata {
            worker: "farm-loadtest".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    #[test]
    fn salts_make_actions_distinct_and_platforms_are_sorted() {
        let c = command(&["/bin/true".into()], &[]);
        let props = vec![
            ("OSFamily".to_string(), "linux".to_string()),
            ("ISA".to_string(), "x86-64".to_string()),
        ];
        let a = action(&c.digest, &Digest::EMPTY, "1", &props);
        let b = action(&c.digest, &Digest::EMPTY, "2", &props);
        assert_ne!(a.digest, b.digest);
        let decoded = reapi::Action::decode(&a.data[..]).unwrap();
        let names: Vec<_> = decoded
            .platform
            .unwrap()
            .properties
            .into_iter()
            .map(|p| p.name)
            .collect();
        assert_eq!(names, ["ISA", "OSFamily"]);
    }

    #[test]
    fn directories_sort_their_files() {
        let d = directory_of_files(&[
            ("b".into(), Digest::of(b"b")),
            ("a".into(), Digest::of(b"a")),
        ]);
        let decoded = reapi::Directory::decode(&d.data[..]).unwrap();
        assert_eq!(decoded.files[0].name, "a");
    }
}
