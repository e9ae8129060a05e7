//! The chat's cryptographic paths as the node runs them (vodozemac, sealing at rest, SQLite),
//! without HTTP: a two-member conversation's message encrypted, delivered and read, and a
//! message to a 100-member group (Megolm once, then one inbox envelope per member device), sent
//! and read by all.

#![allow(missing_docs)] // criterion_group! generates undocumented items

use criterion::{Criterion, criterion_group, criterion_main};
use ues_apps::chat::lab::Lab;

fn dm(c: &mut Criterion) {
    let mut lab = Lab::new(2).unwrap();
    let convo = lab.create(0, &[1]).unwrap();
    lab.read_all().unwrap();
    c.bench_function("chat/dm: send (Olm encrypt, seal, deliver) + read (decrypt, check, keep)", |b| {
        b.iter(|| {
            lab.send(0, &convo, "a message of ordinary length, about as long as people write").unwrap();
            assert_eq!(lab.read_all().unwrap(), 1);
        })
    });
}

fn group(c: &mut Criterion) {
    let mut lab = Lab::new(100).unwrap();
    let members: Vec<usize> = (1..100).collect();
    let convo = lab.create(0, &members).unwrap();
    lab.read_all().unwrap();
    // The first message shares the room key with 99 devices over Olm.
    lab.send(0, &convo, "first").unwrap();
    lab.read_all().unwrap();
    let mut g = c.benchmark_group("chat/group of 100");
    g.sample_size(20);
    g.bench_function("send: Megolm once, 99 envelopes delivered (a new session every 100)", |b| {
        b.iter(|| lab.send(0, &convo, "to the whole group").unwrap())
    });
    lab.read_all().unwrap();
    g.bench_function("send + all 99 read it", |b| {
        b.iter(|| {
            lab.send(0, &convo, "to the whole group").unwrap();
            // 99 envelopes; twice that when the session rotated (every 100 messages: the new
            // room key goes to each member device too).
            let read = lab.read_all().unwrap();
            assert!(read == 99 || read == 198, "{read}");
        })
    });
    g.finish();
}

criterion_group!(benches, dm, group);
criterion_main!(benches);
