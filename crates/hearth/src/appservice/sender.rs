//! Transactions to application services: `PUT /_matrix/app/v1/transactions/{txnId}` with
//! the events each service is interested in, in stream order.
//!
//! One task per service with a URL follows the stream from its own persisted position
//! (table `appservice_state`), as the federation sender and the push follower do, reading
//! only what is durable. A transaction's span is written down before it is first sent, so a
//! retry (after a failure, or after `kill -9`) sends the same events under the same
//! transaction id, which the service may recognise as a repeat; the position moves past
//! them only once the service answered 2xx. Failures back off from [`FIRST_BACKOFF`],
//! doubling up to [`MAX_BACKOFF`], and hold nothing else up. A new service starts at the
//! stream's end: history is not replayed.
//!
//! A service is interested in an event (as the application service API lists it) whose
//! sender, or whose member event's subject, is in its user namespaces; in every event of a
//! room whose id is in its room namespaces, that has an alias in its alias namespaces, or
//! that has a joined member in its user namespaces. Invites of its users to rooms on other
//! servers (not in the event stream) are read beside it.

use std::{collections::HashMap, sync::Arc, time::Duration};

use ruma::{events::room::member::MembershipState, events::TimelineEventType, OwnedRoomId, RoomId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::watch;

use super::{AppService, AppServices};
use crate::{
    error::Result,
    rooms::Rooms,
    store::{codec::json_value, tables, Batch, Store, Table},
    stream::Stream,
};

pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);
pub const MAX_BACKOFF: Duration = Duration::from_secs(5 * 60);
/// Most events in one transaction.
pub const MAX_EVENTS: usize = 100;
/// Stream positions read at once while looking for a service's events.
const SCAN_WINDOW: u64 = 1000;
/// How long a service has to take a transaction.
const SEND_TIMEOUT: Duration = Duration::from_secs(60);

/// How far a service's transactions have got.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Progress {
    /// Every event up to here was taken by the service (or did not concern it).
    pub position: u64,
    /// The id of the next transaction.
    pub txn: u64,
    /// The end of the span transaction `txn` covers, once it was first sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_flight: Option<u64>,
}

json_value!(Progress);

/// Service id → its progress.
pub const APPSERVICE_STATE: Table<String, Progress> = Table::new(tables::APPSERVICE_STATE);

pub struct AppserviceSender {
    services: Arc<AppServices>,
    rooms: Arc<Rooms>,
    store: Arc<Store>,
    stop: watch::Sender<bool>,
}

impl AppserviceSender {
    pub fn new(services: Arc<AppServices>, rooms: Arc<Rooms>, store: Arc<Store>) -> Self {
        AppserviceSender { services, rooms, store, stop: watch::Sender::new(false) }
    }

    /// Runs one follower per service until `stopped` fires.
    pub async fn run(self: Arc<Self>, stream: Arc<Stream>, stopped: tokio::sync::oneshot::Receiver<()>) {
        let mut tasks = tokio::task::JoinSet::new();
        for service in self.services.all().iter().filter(|a| a.url().is_some()) {
            let (this, service, stream) = (self.clone(), service.clone(), stream.clone());
            tasks.spawn(async move { this.follow(&service, &stream).await });
        }
        let _ = stopped.await;
        let _ = self.stop.send(true);
        while tasks.join_next().await.is_some() {}
    }

    fn progress(&self, service: &AppService, stream: &Stream) -> Result<Progress> {
        if let Some(p) = APPSERVICE_STATE.get(&self.store, service.id())? {
            return Ok(p);
        }
        let p = Progress { position: stream.now(), txn: 1, in_flight: None };
        self.save(service, &p)?;
        Ok(p)
    }

    fn save(&self, service: &AppService, p: &Progress) -> Result<()> {
        let mut batch = Batch::new();
        APPSERVICE_STATE.put(&mut batch, service.id(), p);
        Ok(self.store.write(batch)?)
    }

    async fn follow(&self, service: &AppService, stream: &Stream) {
        let mut durable = stream.watch_durable();
        let mut stop = self.stop.subscribe();
        let mut backoff = FIRST_BACKOFF;
        let mut progress = loop {
            match self.progress(service, stream) {
                Ok(p) => break p,
                Err(e) => tracing::error!(appservice = service.id(), error = %e, "cannot read its progress"),
            }
            tokio::select! {
                _ = tokio::time::sleep(FIRST_BACKOFF) => {}
                _ = stop.changed() => return,
            }
        };
        loop {
            if *stop.borrow() {
                return;
            }
            let until = progress.in_flight.unwrap_or_else(|| stream.now());
            if until <= progress.position {
                tokio::select! {
                    changed = durable.changed() => if changed.is_err() { return },
                    _ = stop.changed() => return,
                }
                continue;
            }
            let (events, reached) = match self.collect(service, progress.position, until) {
                Ok(found) => found,
                Err(e) => {
                    tracing::error!(appservice = service.id(), error = %e, "cannot read the events to send");
                    tokio::select! {
                        _ = tokio::time::sleep(FIRST_BACKOFF) => {}
                        _ = stop.changed() => return,
                    }
                    continue;
                }
            };
            if events.is_empty() {
                // Nothing for this service: moved past in memory only (a restart reads the
                // span again and finds nothing again).
                progress.position = reached;
                progress.in_flight = None;
                continue;
            }
            if progress.in_flight != Some(reached) {
                progress.in_flight = Some(reached);
                if let Err(e) = self.save(service, &progress) {
                    tracing::error!(appservice = service.id(), error = %e, "cannot record a transaction");
                    progress.in_flight = None;
                    continue;
                }
            }
            let path = format!("/_matrix/app/v1/transactions/{}", progress.txn);
            let body = json!({ "events": events });
            let sent = self.services.call(service, reqwest::Method::PUT, &path, Some(&body), SEND_TIMEOUT).await;
            match sent {
                Ok(answer) if answer.status.is_success() => {
                    backoff = FIRST_BACKOFF;
                    let next = Progress { position: reached, txn: progress.txn + 1, in_flight: None };
                    match self.save(service, &next) {
                        Ok(()) => progress = next,
                        Err(e) => tracing::error!(appservice = service.id(), error = %e, "cannot record a delivery"),
                    }
                    continue;
                }
                Ok(answer) => {
                    tracing::info!(appservice = service.id(), status = %answer.status, retry_in = ?backoff,
                        "the application service refused a transaction")
                }
                Err(e) => {
                    tracing::info!(appservice = service.id(), error = %e, retry_in = ?backoff,
                        "the application service is unreachable")
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop.changed() => return,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// The events of (since, until] that `service` is interested in, at most
    /// [`MAX_EVENTS`], in the client format; and how far they reach (`until` unless cut).
    pub fn collect(&self, service: &AppService, since: u64, until: u64) -> Result<(Vec<Value>, u64)> {
        let mut events = Vec::new();
        let mut rooms: HashMap<OwnedRoomId, bool> = HashMap::new();
        let mut from = since;
        while from < until {
            let to = until.min(from.saturating_add(SCAN_WINDOW));
            // With invites of this server's users to rooms elsewhere, which are not in the
            // event stream (a bridge hears of the DMs its users are invited to).
            let mut found = self.rooms.stream.events_between(from, to)?;
            found.extend(self.rooms.remote_invites_between(from, to)?);
            found.sort_by_key(|(pos, _)| *pos);
            for (pos, entry) in found {
                let Some(pdu) = self.rooms.pdu_shared(&entry.event_id)? else { continue };
                let subject = match pdu.kind {
                    TimelineEventType::RoomMember => pdu.state_key.as_deref().and_then(|k| UserId::parse(k).ok()),
                    _ => None,
                };
                let wanted = service.is_user_in_namespace(&pdu.sender)
                    || subject.is_some_and(|u| service.is_user_in_namespace(&u))
                    || match rooms.get(&pdu.room_id) {
                        Some(&known) => known,
                        None => {
                            let known = self.room_wanted(service, &pdu.room_id)?;
                            rooms.insert(pdu.room_id.clone(), known);
                            known
                        }
                    };
                // Members and aliases change with state: the room is looked at again.
                if pdu.is_state() {
                    rooms.remove(&pdu.room_id);
                }
                if wanted {
                    events.push(self.rooms.client_event(&pdu, None, None));
                    if events.len() >= MAX_EVENTS {
                        return Ok((events, pos));
                    }
                }
            }
            from = to;
        }
        Ok((events, until))
    }

    /// Whether `service` is interested in every event of `room`.
    fn room_wanted(&self, service: &AppService, room: &RoomId) -> Result<bool> {
        if service.is_room_in_namespace(room) {
            return Ok(true);
        }
        let aliases = self.rooms.local_aliases(room)?;
        if aliases.iter().any(|a| service.is_alias_in_namespace(a.as_str())) {
            return Ok(true);
        }
        let canonical = self.rooms.state_str(room, ruma::events::StateEventType::RoomCanonicalAlias, "alias")?;
        if canonical.is_some_and(|a| service.is_alias_in_namespace(&a)) {
            return Ok(true);
        }
        Ok(self.rooms.members_shared(room, &MembershipState::Join)?.iter().any(|u| service.is_user_in_namespace(u)))
    }
}
