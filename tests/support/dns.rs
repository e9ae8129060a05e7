//! A DNS server on 127.0.0.1 for tests: answers every query with the TXT records `zone` gives
//! for the queried name (each record a list of strings), over UDP, for at most 200 queries.

#![allow(dead_code, unreachable_pub)]

use hickory_proto::op::{Message, OpCode};
use hickory_proto::rr::rdata::TXT;
use hickory_proto::rr::{RData, Record};

pub fn txt_server(zone: fn(&str) -> Vec<Vec<&'static str>>) -> std::net::SocketAddr {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = sock.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        for _ in 0..200 {
            let Ok((n, from)) = sock.recv_from(&mut buf) else { return };
            let Ok(query) = Message::from_vec(&buf[..n]) else { continue };
            let Some(q) = query.queries.first().cloned() else { continue };
            let mut resp = Message::response(query.metadata.id, OpCode::Query);
            for strings in zone(&q.name().to_ascii()) {
                let txt = TXT::new(strings.into_iter().map(String::from).collect());
                resp.add_answer(Record::from_rdata(q.name().clone(), 60, RData::TXT(txt)));
            }
            resp.add_query(q);
            let _ = sock.send_to(&resp.to_vec().unwrap(), from);
        }
    });
    addr
}
