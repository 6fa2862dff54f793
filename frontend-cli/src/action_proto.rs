//! A resolver [`ActionSpec`] with its input root as REAPI `Command` and `Action` messages.

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use bytes::Bytes;
use cas::Digest;
use prost::Message as _;
use resolver::ActionSpec;

/// The encoded messages of one action.
#[derive(Clone, Debug)]
pub struct EncodedAction {
    pub action: reapi::Action,
    pub command: reapi::Command,
    pub action_digest: Digest,
    pub action_bytes: Bytes,
    pub command_digest: Digest,
    pub command_bytes: Bytes,
}

/// Builds the Command (REAPI 2.0 output fields, which every server reads) and the Action.
pub fn encode(spec: &ActionSpec, input_root: Digest, do_not_cache: bool) -> EncodedAction {
    let platform = reapi::Platform {
        properties: spec
            .platform
            .iter()
            .map(|(name, value)| reapi::platform::Property {
                name: name.clone(),
                value: value.clone(),
            })
            .collect(),
    };
    let mut output_files = spec.output_files.clone();
    output_files.sort();
    let mut output_directories = spec.output_directories.clone();
    output_directories.sort();
    #[allow(deprecated)]
    let command = reapi::Command {
        arguments: spec.args.clone(),
        environment_variables: spec
            .env
            .iter()
            .map(|(name, value)| reapi::command::EnvironmentVariable {
                name: name.clone(),
                value: value.clone(),
            })
            .collect(),
        output_files,
        output_directories,
        working_directory: spec.working_directory.clone(),
        ..Default::default()
    };
    let command_bytes = Bytes::from(command.encode_to_vec());
    let command_digest = Digest::of(&command_bytes);
    let action = reapi::Action {
        command_digest: Some(command_digest.to_proto()),
        input_root_digest: Some(input_root.to_proto()),
        do_not_cache,
        platform: Some(platform),
        ..Default::default()
    };
    let action_bytes = Bytes::from(action.encode_to_vec());
    EncodedAction {
        action_digest: Digest::of(&action_bytes),
        action,
        command,
        action_bytes,
        command_digest,
        command_bytes,
    }
}
