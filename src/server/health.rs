//! The health service's statuses, following the node's.
use tokio::sync::watch;

use super::NodeStatus;
use crate::api::KvService;
use crate::proto as pb;

/// The health of `raftkv.v1.KeyValue` (what a readiness probe asks): SERVING while
/// this node knows a leader, so it can answer clients; NOT_SERVING while it knows none
/// (starting, an election, cut off from the majority). The overall status ("") stays
/// SERVING while the process runs (what a liveness probe asks).
pub(super) async fn report_health(
    mut status: watch::Receiver<NodeStatus>,
    mut reporter: tonic_health::server::HealthReporter,
    mut shutdown: watch::Receiver<bool>,
) {
    type Kv = pb::key_value_server::KeyValueServer<KvService>;
    let mut serving = false;
    let mut driver_alive = true;
    loop {
        let has_leader = status.borrow_and_update().leader.is_some();
        if has_leader != serving {
            serving = has_leader;
            if serving {
                reporter.set_serving::<Kv>().await;
            } else {
                reporter.set_not_serving::<Kv>().await;
            }
        }
        tokio::select! {
            changed = status.changed() => if changed.is_err() { driver_alive = false; break },
            _ = shutdown.wait_for(|s| *s) => break,
        }
    }
    if !driver_alive || *shutdown.borrow() {
        // Liveness follows the driver: nothing is served once it is gone.
        reporter.set_not_serving::<Kv>().await;
        reporter.set_service_status("", tonic_health::ServingStatus::NotServing).await;
    }
}
