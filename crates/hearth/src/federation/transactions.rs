//! Inbound transactions (`PUT /send/{txnId}`): at most [`MAX_PDUS`] PDUs and [`MAX_EDUS`]
//! EDUs, each PDU checked and appended on its own (the answer holds one result per PDU),
//! each EDU applied if its origin may send it. A transaction is handled once: the answer
//! is kept per (origin, txn id) and given again to a replay; one origin's transactions are
//! handled one at a time, as the spec expects of senders.
//!
//! EDUs handled: `m.typing` and `m.receipt`, for users of the origin joined to the room
//! (and admitted by its server ACL); `m.direct_to_device`, `m.device_list_update` and
//! `m.signing_key_update` for users of the origin (see [`super::keys`]); `m.presence`
//! (see [`super::presence`]).

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use http::StatusCode;
use parking_lot::Mutex;
use ruma::{
    events::room::member::MembershipState, OwnedEventId, OwnedRoomId, OwnedServerName, OwnedUserId, ServerName,
};
use serde::{Deserialize, Serialize};
use serde_json::{value::RawValue as RawJsonValue, Value};

use super::Federation;
use crate::{
    error::{Error, Result},
    store::{codec::json_value, tables, Batch, KeyRange, Order, Table},
};

pub const MAX_PDUS: usize = 50;
pub const MAX_EDUS: usize = 100;
/// How long a remote user's typing notice lasts without a renewal.
const REMOTE_TYPING_TIMEOUT: Duration = Duration::from_secs(30);
/// Most receipts taken from one EDU.
const MAX_RECEIPTS_PER_EDU: usize = 1000;

/// The answer to a transaction: per PDU, `None` for success or the error.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TxnAnswer {
    pub pdus: BTreeMap<OwnedEventId, Option<String>>,
    /// When it was answered: answers are kept [`KEEP_ANSWERS_MS`].
    #[serde(default)]
    pub ts: u64,
}

json_value!(TxnAnswer);

/// (origin, txn id) → the answer given.
pub const FEDERATION_TXNS: Table<(String, String), TxnAnswer> = Table::new(tables::FEDERATION_TXNS);

/// How long an answer is kept for a replay: a sender retries a transaction for minutes or
/// hours, not days.
pub const KEEP_ANSWERS_MS: u64 = 24 * 60 * 60 * 1000;
/// Answers stored between two sweeps of the expired ones.
const SWEEP_EVERY: u64 = 1000;

/// One origin's transactions at a time.
#[derive(Default)]
pub struct SeenTransactions {
    turns: Mutex<std::collections::HashMap<OwnedServerName, Arc<tokio::sync::Mutex<()>>>>,
    /// Answers stored since the last sweep.
    stored: std::sync::atomic::AtomicU64,
}

#[derive(Deserialize)]
struct Edu {
    edu_type: String,
    #[serde(default)]
    content: Value,
}

impl Federation {
    /// Handles one transaction (see the module doc).
    pub async fn receive_transaction(
        &self,
        origin: &ServerName,
        txn_id: &str,
        pdus: &[Box<RawJsonValue>],
        edus: &[Box<RawJsonValue>],
    ) -> Result<TxnAnswer> {
        if pdus.len() > MAX_PDUS || edus.len() > MAX_EDUS {
            return Err(Error::matrix(
                StatusCode::BAD_REQUEST,
                "M_BAD_JSON",
                format!("A transaction holds at most {MAX_PDUS} PDUs and {MAX_EDUS} EDUs"),
            ));
        }
        self.sender.contacted(origin);
        let turn = {
            let mut turns = self.seen_txns.turns.lock();
            if turns.len() > 1024 {
                turns.retain(|_, t| Arc::strong_count(t) > 1);
            }
            turns.entry(origin.to_owned()).or_default().clone()
        };
        let _turn = turn.lock().await;
        if let Some(answer) = FEDERATION_TXNS.get(&self.store, (origin.as_str(), txn_id))? {
            return Ok(answer);
        }
        let mut answer = TxnAnswer::default();
        for raw in pdus {
            let (id, result) = self.receive_pdu(origin, raw).await;
            if let Err(e) = &result {
                tracing::info!(%origin, event = ?id, error = %e, "a received PDU was not appended");
            }
            if let Some(id) = id {
                answer.pdus.insert(id, result.err().filter(|e| !super::receive::is_rejection(e)));
            }
        }
        for raw in edus {
            match serde_json::from_str::<Edu>(raw.get()) {
                Ok(edu) => self.receive_edu(origin, edu),
                Err(e) => tracing::debug!(%origin, error = %e, "ignoring a malformed EDU"),
            }
        }
        answer.ts = crate::time::now_millis();
        let mut batch = Batch::new();
        FEDERATION_TXNS.put(&mut batch, (origin.as_str(), txn_id), &answer);
        self.store.write(batch)?;
        if self.seen_txns.stored.fetch_add(1, std::sync::atomic::Ordering::Relaxed).is_multiple_of(SWEEP_EVERY) {
            self.sweep_answers()?;
        }
        Ok(answer)
    }

    /// Forgets the answers older than [`KEEP_ANSWERS_MS`] (they would otherwise pile up
    /// for as long as the server federates). Runs at the first transaction after a start
    /// and every [`SWEEP_EVERY`] after.
    fn sweep_answers(&self) -> Result<()> {
        let cutoff = crate::time::now_millis().saturating_sub(KEEP_ANSWERS_MS);
        let mut batch = Batch::new();
        let mut swept = 0;
        FEDERATION_TXNS.scan_range(&self.store, &KeyRange::default(), Order::Ascending, |(origin, txn), answer| {
            if answer.ts < cutoff {
                FEDERATION_TXNS.delete(&mut batch, (origin.as_str(), txn.as_str()));
                swept += 1;
            }
            true
        })?;
        if swept > 0 {
            self.store.write(batch)?;
            tracing::debug!(swept, "forgot old transaction answers");
        }
        Ok(())
    }

    fn receive_edu(&self, origin: &ServerName, edu: Edu) {
        match edu.edu_type.as_str() {
            "m.typing" => self.receive_typing(origin, &edu.content),
            "m.receipt" => self.receive_receipts(origin, &edu.content),
            "m.direct_to_device" => self.receive_to_device(origin, &edu.content),
            "m.presence" => self.receive_presence(origin, &edu.content),
            kind @ ("m.device_list_update" | "m.signing_key_update") => {
                self.receive_device_change(origin, kind, &edu.content)
            }
            _ => {}
        }
    }

    /// Whether `user` (of `origin`) may send room EDUs to `room`: joined, and its server
    /// admitted by the ACL.
    fn may_send_room_edu(&self, origin: &ServerName, room: &ruma::RoomId, user: &ruma::UserId) -> bool {
        user.server_name() == origin
            && self.acl_allows(room, origin).unwrap_or(false)
            && self.rooms.is_joined(room, user).unwrap_or(false)
    }

    fn receive_typing(&self, origin: &ServerName, content: &Value) {
        #[derive(Deserialize)]
        struct Typing {
            room_id: OwnedRoomId,
            user_id: OwnedUserId,
            typing: bool,
        }
        let Ok(t) = serde_json::from_value::<Typing>(content.clone()) else { return };
        if !self.may_send_room_edu(origin, &t.room_id, &t.user_id) {
            return tracing::debug!(%origin, user = %t.user_id, "ignoring a typing notice it may not send");
        }
        let members = self.rooms.members(&t.room_id, &MembershipState::Join).unwrap_or_default();
        let timeout = t.typing.then_some(REMOTE_TYPING_TIMEOUT);
        self.typing.set(&t.room_id, &t.user_id, timeout, members);
    }

    fn receive_receipts(&self, origin: &ServerName, content: &Value) {
        let Some(rooms) = content.as_object() else { return };
        let mut taken = 0;
        for (room, by_type) in rooms {
            let Ok(room) = OwnedRoomId::try_from(room.as_str()) else { continue };
            let Some(read) = by_type.get("m.read").and_then(Value::as_object) else { continue };
            for (user, receipt) in read {
                taken += 1;
                if taken > MAX_RECEIPTS_PER_EDU {
                    return;
                }
                let Ok(user) = OwnedUserId::try_from(user.as_str()) else { continue };
                if !self.may_send_room_edu(origin, &room, &user) {
                    continue;
                }
                let thread = receipt.pointer("/data/thread_id").and_then(Value::as_str);
                let Some(ids) = receipt.get("event_ids").and_then(Value::as_array) else { continue };
                // The newest one counts; receipts name one event each in practice.
                let Some(event) = ids.iter().rev().find_map(Value::as_str) else { continue };
                let Ok(event) = OwnedEventId::try_from(event) else { continue };
                if let Err(e) = self.rooms.set_receipt(&room, &user, "m.read", thread, &event) {
                    tracing::debug!(%origin, error = %e, "ignoring a receipt");
                }
            }
        }
    }
}
