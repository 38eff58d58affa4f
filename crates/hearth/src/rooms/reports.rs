//! Content reports (`/rooms/{roomId}/report/{eventId}`): kept for the server admins, per
//! room and time. The reporter learns nothing more than that the report was taken.

use ruma::{EventId, OwnedUserId, RoomId, UserId};
use serde::{Deserialize, Serialize};

use super::Rooms;
use crate::{
    error::{Error, Result},
    store::codec::json_value,
    store::{tables, Batch, Table},
};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub reporter: OwnedUserId,
    /// The event reported; empty for a report of a whole room or of a user.
    pub event_id: String,
    /// The user reported (a report of a user).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<OwnedUserId>,
    pub reason: Option<String>,
    pub ts: u64,
}

json_value!(Report);

pub const REPORTS: Table<(String, u64), Report> = Table::new(tables::REPORTS);

/// Longest reason kept, in bytes.
pub const MAX_REASON_BYTES: usize = 2000;

impl Rooms {
    /// Stores a report of an event the reporter can see: 404 for one they cannot, and for
    /// a room they are not in (the spec names that answer for both).
    pub fn report_event(
        &self,
        reporter: &UserId,
        room_id: &RoomId,
        event_id: &EventId,
        reason: Option<String>,
    ) -> Result<()> {
        self.known_room(room_id)?;
        let until = self.visible_until(room_id, reporter)?.ok_or_else(|| Error::not_found("Event not found"))?;
        self.event_meta(event_id)?
            .filter(|m| m.room_id == room_id && m.stream <= until)
            .ok_or_else(|| Error::not_found("Event not found"))?;
        if reason.as_ref().is_some_and(|r| r.len() > MAX_REASON_BYTES) {
            return Err(Error::too_large("Reason too long"));
        }
        let ts = crate::time::now_millis();
        let report = Report { reporter: reporter.to_owned(), event_id: event_id.to_string(), user: None, reason, ts };
        let mut batch = Batch::new();
        REPORTS.put(&mut batch, (room_id.as_str(), ts), &report);
        self.store.write(batch)?;
        tracing::warn!(room = %room_id, event = %event_id, %reporter, reason = ?report.reason, "content reported");
        Ok(())
    }

    /// Stores a report of a whole room this server knows (404 for one it does not).
    pub fn report_room(&self, reporter: &UserId, room_id: &RoomId, reason: Option<String>) -> Result<()> {
        self.known_room(room_id)?;
        self.keep_report(room_id.as_str(), reporter, None, reason)?;
        tracing::warn!(room = %room_id, %reporter, "room reported");
        Ok(())
    }

    /// Stores a report of a user (kept under no room). Whether the user exists is not
    /// told: the answer is the same either way.
    pub fn report_user(&self, reporter: &UserId, user: &UserId, reason: Option<String>) -> Result<()> {
        self.keep_report("", reporter, Some(user), reason)?;
        tracing::warn!(%user, %reporter, "user reported");
        Ok(())
    }

    fn keep_report(&self, room: &str, reporter: &UserId, user: Option<&UserId>, reason: Option<String>) -> Result<()> {
        if reason.as_ref().is_some_and(|r| r.len() > MAX_REASON_BYTES) {
            return Err(Error::too_large("Reason too long"));
        }
        let ts = crate::time::now_millis();
        let report = Report {
            reporter: reporter.to_owned(),
            event_id: String::new(),
            user: user.map(ToOwned::to_owned),
            reason,
            ts,
        };
        let mut batch = Batch::new();
        REPORTS.put(&mut batch, (room, ts), &report);
        Ok(self.store.write(batch)?)
    }
}
