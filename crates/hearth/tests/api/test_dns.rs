//! A real DNS server on loopback for the discovery tests: it answers A, AAAA and SRV
//! questions over UDP from a table the test fills, NXDOMAIN for anything else. Hearth's
//! resolver is pointed at it with `dns_servers`, so SRV lookups and address lookups go over
//! the wire exactly as they would to the system's resolver.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use hickory_resolver::proto::{
    op::{Message, MessageType, OpCode, ResponseCode},
    rr::{
        rdata::{A, AAAA, SRV},
        Name, RData, Record, RecordType,
    },
};
use parking_lot::Mutex;
use tokio::net::UdpSocket;

type Table = HashMap<(String, RecordType), Vec<RData>>;

pub struct TestDns {
    pub addr: SocketAddr,
    records: Arc<Mutex<Table>>,
}

fn key(name: &str, kind: RecordType) -> (String, RecordType) {
    (name.trim_end_matches('.').to_ascii_lowercase(), kind)
}

impl TestDns {
    /// Starts answering on 127.0.0.1 (a free port); stops when the runtime does.
    pub async fn start() -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind DNS");
        let addr = socket.local_addr().expect("addr");
        let records: Arc<Mutex<Table>> = Arc::default();
        let table = records.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((len, from)) = socket.recv_from(&mut buf).await else { return };
                let Ok(query) = Message::from_vec(&buf[..len]) else { continue };
                let answer = answer(&query, &table.lock());
                if let Ok(bytes) = answer.to_vec() {
                    let _ = socket.send_to(&bytes, from).await;
                }
            }
        });
        TestDns { addr, records }
    }

    pub fn address(&self, name: &str, ip: IpAddr) {
        let (kind, data) = match ip {
            IpAddr::V4(v4) => (RecordType::A, RData::A(A(v4))),
            IpAddr::V6(v6) => (RecordType::AAAA, RData::AAAA(AAAA(v6))),
        };
        self.records.lock().entry(key(name, kind)).or_default().push(data);
    }

    /// An SRV record `name` → `target:port`.
    pub fn srv(&self, name: &str, priority: u16, weight: u16, port: u16, target: &str) {
        let target = Name::from_ascii(format!("{}.", target.trim_end_matches('.'))).expect("target name");
        let data = RData::SRV(SRV::new(priority, weight, port, target));
        self.records.lock().entry(key(name, RecordType::SRV)).or_default().push(data);
    }
}

fn answer(query: &Message, table: &Table) -> Message {
    let mut reply = Message::new(query.metadata.id, MessageType::Response, OpCode::Query);
    reply.metadata.recursion_desired = query.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    reply.metadata.authoritative = true;
    let mut found_any = false;
    for q in &query.queries {
        reply.add_query(q.clone());
        let name = q.name().to_ascii();
        let names_exist = table.keys().any(|(n, _)| *n == key(&name, q.query_type()).0);
        found_any |= names_exist;
        for data in table.get(&key(&name, q.query_type())).into_iter().flatten() {
            reply.add_answer(Record::from_rdata(q.name().clone(), 60, data.clone()));
        }
    }
    if !found_any {
        reply.metadata.response_code = ResponseCode::NXDomain;
    }
    reply
}

/// A UDP socket that takes DNS questions and never answers: a resolver that is down.
pub async fn silent() -> (SocketAddr, UdpSocket) {
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    (socket.local_addr().expect("addr"), socket)
}
