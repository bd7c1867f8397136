//! What the view knows of each node: one `WatchStatus` stream per endpoint, turned
//! into the JSON the page draws, and the actions the page asks for.
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::broadcast;
use tonic::transport::Channel;

use super::ViewError;
use crate::proto::{self as pb, key_value_client::KeyValueClient};

/// Log entries each node's card shows.
const LOG_TAIL: u32 = 24;
/// A node whose stream says nothing this long is shown as not answering (nodes send
/// at least one update a second).
const SILENCE: Duration = Duration::from_secs(3);
/// The wait before asking a node that did not answer again.
const RETRY: Duration = Duration::from_millis(300);

/// What the page can ask of a node's process (`raftkv dev` only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Kill,
    Restart,
    Pause,
    Resume,
    /// Cut the node off from its peers (both ways), as a partition would.
    Isolate,
    Heal,
}

impl std::str::FromStr for Action {
    type Err = ViewError;
    fn from_str(s: &str) -> Result<Action, ViewError> {
        match s {
            "kill" => Ok(Action::Kill),
            "restart" => Ok(Action::Restart),
            "pause" => Ok(Action::Pause),
            "resume" => Ok(Action::Resume),
            "isolate" => Ok(Action::Isolate),
            "heal" => Ok(Action::Heal),
            _ => Err(ViewError::BadRequest(format!(
                "unknown action {s:?}: kill, restart, pause, resume, isolate or heal"
            ))),
        }
    }
}

/// The processes behind the endpoints, for a view that may act on them.
pub trait Control: Send + Sync {
    /// Does `action` to the node serving clients at `endpoint`; says what it did.
    fn act(&self, endpoint: &str, action: Action) -> Result<String, ViewError>;
    /// "running", "isolated", "paused" or "stopped".
    fn process(&self, endpoint: &str) -> &'static str;
}

pub struct Slot {
    pub endpoint: String,
    pub channel: Channel,
}

/// Every node's last state, and the stream of changes the pages subscribe to.
pub struct Nodes {
    pub slots: Vec<Slot>,
    state: Mutex<Vec<Value>>,
    pub changes: broadcast::Sender<Arc<str>>,
    pub control: Option<Arc<dyn Control>>,
    pub timeout: Duration,
}

impl Nodes {
    pub fn new(slots: Vec<Slot>, control: Option<Arc<dyn Control>>, timeout: Duration) -> Arc<Nodes> {
        let state = slots.iter().map(|s| json!({"endpoint": s.endpoint, "up": false, "name": s.endpoint})).collect();
        let (changes, _) = broadcast::channel(256);
        Arc::new(Nodes { slots, state: Mutex::new(state), changes, control, timeout })
    }

    /// Every node's last state, as server-sent event frames.
    pub fn snapshot(&self) -> Vec<Arc<str>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).iter().map(frame).collect()
    }

    /// Records slot `i`'s state and tells the pages, if it changed.
    fn publish(&self, i: usize, mut node: Value) {
        if let Some(c) = &self.control {
            node["process"] = json!(c.process(&self.slots[i].endpoint));
        }
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if node["up"] == false {
            // Keep the name a node had while it answered.
            node["name"] = state[i]["name"].clone();
        }
        if state[i] == node {
            return;
        }
        state[i] = node;
        let _ = self.changes.send(frame(&state[i]));
    }

    /// Publishes slot `i` again (after an action on its process).
    pub fn refresh(&self, i: usize) {
        let node = self.state.lock().unwrap_or_else(|e| e.into_inner())[i].clone();
        self.publish(i, node);
    }

    /// Follows slot `i`'s status stream for as long as the view runs.
    pub async fn watch(self: Arc<Self>, i: usize) {
        let endpoint = self.slots[i].endpoint.clone();
        loop {
            let mut client = KeyValueClient::new(self.slots[i].channel.clone());
            let ask = client.watch_status(pb::WatchStatusRequest { log_tail: LOG_TAIL });
            let why = match tokio::time::timeout(SILENCE, ask).await.unwrap_or_else(|_| {
                Err(tonic::Status::deadline_exceeded(format!("no answer for {} s", SILENCE.as_secs())))
            }) {
                Ok(stream) => {
                    let mut stream = stream.into_inner();
                    loop {
                        match tokio::time::timeout(SILENCE, stream.message()).await {
                            Ok(Ok(Some(m))) => self.publish(i, node_json(&endpoint, m)),
                            Ok(Ok(None)) => break "the node closed its status stream".to_string(),
                            Ok(Err(e)) => break e.message().to_string(),
                            Err(_) => break format!("no answer for {} s", SILENCE.as_secs()),
                        }
                    }
                }
                Err(e) => e.message().to_string(),
            };
            self.publish(i, json!({"endpoint": endpoint, "up": false, "error": why}));
            tokio::time::sleep(RETRY).await;
        }
    }

    /// The endpoints to ask, the leader first, then the others that answer.
    fn by_preference(&self) -> Vec<usize> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut order: Vec<usize> = (0..state.len()).filter(|&i| state[i]["up"] == true).collect();
        order.sort_by_key(|&i| state[i]["role"] != "leader");
        order
    }

    fn client(&self, i: usize) -> KeyValueClient<Channel> {
        KeyValueClient::new(self.slots[i].channel.clone())
    }

    fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        req.set_timeout(self.timeout);
        req
    }

    /// Writes `key` = `value` through the leader (or any node that answers).
    pub async fn put(&self, key: String, value: String) -> Result<Value, ViewError> {
        let mut last = "no node answers".to_string();
        for i in self.by_preference() {
            let req = self.request(pb::StoreRequest { key: key.clone(), value: value.clone() });
            match self.client(i).store(req).await {
                Ok(r) => {
                    let r = r.into_inner();
                    return Ok(json!({
                        "message": format!("put {key} = {value}: committed at index {} in term {}", r.index, r.term),
                        "index": r.index,
                        "term": r.term,
                    }));
                }
                // Only a refusal that says nothing was written may be tried elsewhere.
                Err(e) if crate::client::never_applied(&e) => last = e.message().to_string(),
                Err(e) => return Err(ViewError::Failed(crate::client::describe(&e))),
            }
        }
        Err(ViewError::Failed(format!("put {key}: {last}")))
    }

    /// Hands leadership to the member `to` (or the most up-to-date follower).
    pub async fn transfer(&self, to: String) -> Result<Value, ViewError> {
        let Some(&i) = self.by_preference().first() else { return Err(ViewError::Failed("no node answers".into())) };
        let req = self.request(pb::TransferLeaderRequest { target: to });
        let r = self.client(i).transfer_leader(req).await.map_err(|e| ViewError::Failed(e.message().to_string()))?;
        let r = r.into_inner();
        Ok(json!({"message": format!("{} leads term {}", r.leader, r.term)}))
    }

    /// Acts on the process of the node at `endpoint`.
    pub fn act(&self, endpoint: &str, action: Action) -> Result<Value, ViewError> {
        let failed = ViewError::Failed;
        let control =
            self.control.as_ref().ok_or_else(|| failed("this view does not control the nodes' processes".into()))?;
        let position = self.slots.iter().position(|s| s.endpoint == endpoint);
        let i = position.ok_or_else(|| failed(format!("no node at {endpoint:?}")))?;
        let message = control.act(endpoint, action)?;
        self.refresh(i);
        Ok(json!({"message": message}))
    }
}

fn frame(node: &Value) -> Arc<str> {
    format!("event: node\ndata: {node}\n\n").into()
}

fn node_json(endpoint: &str, m: pb::WatchStatusResponse) -> Value {
    let st = m.status.unwrap_or_default();
    let role = match pb::Role::try_from(st.role).unwrap_or(pb::Role::Unspecified) {
        pb::Role::Leader => "leader",
        pb::Role::Candidate => "candidate",
        _ => "follower",
    };
    let log: Vec<Value> = m.log_tail.iter().map(|e| json!([e.index, e.term, e.kind])).collect();
    json!({
        "endpoint": endpoint,
        "up": true,
        "name": st.name,
        "role": role,
        "term": st.term,
        "leader": st.leader,
        "voted_for": m.voted_for,
        "commit": st.commit_index,
        "applied": st.applied_index,
        "first": m.first_log_index,
        "last": st.last_log_index,
        "voters": st.members,
        "learners": st.learners,
        "revision": st.revision,
        "log": log,
    })
}
