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
    pub event_id: String,
    pub reason: Option<String>,
    pub ts: u64,
}

json_value!(Report);

pub const REPORTS: Table<(String, u64), Report> = Table::new(tables::REPORTS);

/// Longest reason kept, in bytes.
pub const MAX_REASON_BYTES: usize = 2000;

impl Rooms {
    /// Stores a report of an event the reporter can see (404 for one they cannot).
    pub fn report_event(
        &self,
        reporter: &UserId,
        room_id: &RoomId,
        event_id: &EventId,
        reason: Option<String>,
    ) -> Result<()> {
        let until = self.require_visible(room_id, reporter)?;
        self.event_meta(event_id)?
            .filter(|m| m.room_id == room_id && m.stream <= until)
            .ok_or_else(|| Error::not_found("Event not found"))?;
        if reason.as_ref().is_some_and(|r| r.len() > MAX_REASON_BYTES) {
            return Err(Error::too_large("Reason too long"));
        }
        let ts = crate::time::now_millis();
        let report = Report { reporter: reporter.to_owned(), event_id: event_id.to_string(), reason, ts };
        let mut batch = Batch::new();
        REPORTS.put(&mut batch, (room_id.as_str(), ts), &report);
        self.store.write(batch)?;
        tracing::warn!(room = %room_id, event = %event_id, %reporter, reason = ?report.reason, "content reported");
        Ok(())
    }
}
