//! Server-server API: inbound transactions (`PUT /send/{txnId}`).

use std::sync::Arc;

use ruma::api::federation::transactions::send_transaction_message;

use crate::{
    api::Ruma,
    error::{Error, Result},
    Services,
};

/// `PUT /_matrix/federation/v1/send/{txnId}`: one result per PDU; a transaction from
/// another server than the one that signed the request is refused.
pub async fn send_transaction_message(
    s: Arc<Services>,
    req: Ruma<send_transaction_message::v1::Request>,
) -> Result<send_transaction_message::v1::Response> {
    let origin = req.origin()?;
    let b = &req.body;
    if b.origin != origin {
        return Err(Error::forbidden("The transaction's origin is not the server that signed the request"));
    }
    let edus: Vec<Box<serde_json::value::RawValue>> = b.edus.iter().map(|e| e.json().to_owned()).collect();
    let answer = s.federation.receive_transaction(origin, b.transaction_id.as_str(), &b.pdus, &edus).await?;
    let pdus = answer.pdus.into_iter().map(|(id, r)| (id, r.map_or(Ok(()), Err))).collect();
    Ok(send_transaction_message::v1::Response::new(pdus))
}
