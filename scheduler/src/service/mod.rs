//! Every service the scheduler's port serves: REAPI Capabilities (with execution
//! capabilities), ContentAddressableStorage, ActionCache and ByteStream (from `cas`, over the
//! same [`Storage`]), Execution, google.longrunning Operations and the worker protocol, so a
//! client and a worker each need one address.

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use cas::service::capabilities::CapabilitiesService;
use cas::service::Storage;
use reapi::capabilities_server::CapabilitiesServer;
use tonic::transport::server::Router;
use tonic::transport::{Channel, Server};

use crate::action_cache::{ForwardingActionCache, ResultCache};
use crate::execution::ExecutionService;
use crate::scheduling::Scheduler;
use crate::workers::WorkerService;

pub mod operations;

pub use operations::OperationsService;

/// What this scheduler advertises in GetCapabilities: execution enabled, SHA-256, priorities
/// over the whole `i32` range (lower runs sooner).
pub fn execution_capabilities() -> reapi::ExecutionCapabilities {
    let sha256 = reapi::digest_function::Value::Sha256 as i32;
    reapi::ExecutionCapabilities {
        digest_function: sha256,
        exec_enabled: true,
        execution_priority_capabilities: Some(reapi::PriorityCapabilities {
            priorities: vec![reapi::priority_capabilities::PriorityRange {
                min_priority: i32::MIN,
                max_priority: i32::MAX,
            }],
        }),
        supported_node_properties: Vec::new(),
        digest_functions: vec![sha256],
    }
}

/// The scheduler and the storage its port serves.
#[derive(Clone, Debug)]
pub struct SchedulerServices {
    pub scheduler: Scheduler,
    /// The CAS (an embedded store, or a [`cas::store::grpc::GrpcStore`] forwarding to a
    /// `farm-cas`) and, when `results` is local, the action-cache store.
    pub storage: Storage,
    /// Where action results are looked up and written.
    pub results: ResultCache,
    /// The remote REAPI server the ActionCache service forwards to, if any.
    forward_channel: Option<Channel>,
}

impl SchedulerServices {
    /// Services over an embedded storage: its action-cache store is the action cache.
    pub fn new(scheduler: Scheduler, storage: Storage) -> Self {
        let results = ResultCache::Local(storage.clone());
        SchedulerServices {
            scheduler,
            storage,
            results,
            forward_channel: None,
        }
    }

    /// Services forwarding the action cache to the REAPI server on `channel` (the CAS is
    /// forwarded by `storage`'s store).
    pub fn forwarding(scheduler: Scheduler, storage: Storage, channel: Channel) -> Self {
        SchedulerServices {
            scheduler,
            storage,
            results: ResultCache::remote(channel.clone()),
            forward_channel: Some(channel),
        }
    }

    /// Adds every service to `server`; the caller may add more and serve the router.
    pub fn add_to(&self, server: &mut Server) -> Router {
        let storage = &self.storage;
        let scheduler = &self.scheduler;
        let capabilities = CapabilitiesService::new(storage, Some(execution_capabilities()));
        let execution =
            ExecutionService::new(scheduler.clone(), storage.clone(), self.results.clone());
        let workers = WorkerService::new(scheduler.clone(), self.results.clone());
        let router = server
            .add_service(CapabilitiesServer::new(capabilities))
            .add_service(cas::service::cas::service(storage))
            .add_service(cas::service::bytestream::service(storage))
            .add_service(execution.into_server())
            .add_service(OperationsService::new(scheduler.clone()).into_server())
            .add_service(workers.into_server());
        match &self.forward_channel {
            Some(channel) => {
                router.add_service(ForwardingActionCache::new(channel.clone()).into_server())
            }
            None => router.add_service(cas::service::action_cache::service(storage)),
        }
    }
}
