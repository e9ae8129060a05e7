//! Property tests of DAG-CBOR and CAR.

use std::collections::BTreeMap;

use proptest::prelude::*;
use ues_ipld::car::{CarReader, CarWriter};
use ues_ipld::{DAG_CBOR, Ipld, cid_sha256, dagcbor};

fn ipld() -> impl Strategy<Value = Ipld> {
    let leaf = prop_oneof![
        Just(Ipld::Null),
        any::<bool>().prop_map(Ipld::Bool),
        any::<i64>().prop_map(|i| Ipld::Integer(i as i128)),
        any::<u64>().prop_map(|i| Ipld::Integer(i as i128)),
        ".{0,20}".prop_map(Ipld::String),
        prop::collection::vec(any::<u8>(), 0..40).prop_map(Ipld::Bytes),
        any::<[u8; 8]>().prop_map(|b| Ipld::Link(cid_sha256(DAG_CBOR, &b))),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Ipld::List),
            prop::collection::btree_map(".{0,8}", inner, 0..8).prop_map(|m: BTreeMap<String, Ipld>| Ipld::Map(m)),
        ]
    })
}

proptest! {
    #[test]
    fn encode_decode_encode_is_identical(v in ipld()) {
        let bytes = dagcbor::encode(&v);
        let back = dagcbor::decode_atproto(&bytes).unwrap();
        prop_assert_eq!(&back, &v);
        prop_assert_eq!(dagcbor::encode(&back), bytes);
    }

    #[test]
    fn decoder_never_panics_and_accepts_only_canonical(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        if let Ok(v) = dagcbor::decode_atproto(&bytes) {
            // Whatever it accepts re-encodes to exactly the same bytes.
            prop_assert_eq!(dagcbor::encode(&v), bytes);
        }
    }

    #[test]
    fn car_write_read_round_trip(blocks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 0..20)) {
        let blocks: Vec<_> = blocks.into_iter().map(|b| (cid_sha256(0x55, &b), b)).collect();
        let roots: Vec<_> = blocks.iter().take(2).map(|b| b.0).collect();
        let mut w = CarWriter::new(Vec::new(), &roots).unwrap();
        for (c, d) in &blocks {
            w.write_block(c, d).unwrap();
        }
        let bytes = w.finish().unwrap();
        let r = CarReader::new(&bytes[..]).unwrap();
        prop_assert_eq!(r.roots(), &roots[..]);
        let back: Vec<_> = r.collect::<Result<_, _>>().unwrap();
        prop_assert_eq!(back, blocks);
    }
}

#[test]
fn car_reader_refuses_a_changed_block_and_a_truncated_stream() {
    let data = b"hello".to_vec();
    let cid = cid_sha256(0x55, &data);
    let mut w = CarWriter::new(Vec::new(), &[cid]).unwrap();
    w.write_block(&cid, &data).unwrap();
    let bytes = w.finish().unwrap();
    let mut bad = bytes.clone();
    *bad.last_mut().unwrap() ^= 1;
    let err = CarReader::new(&bad[..]).unwrap().next().unwrap().unwrap_err();
    assert!(matches!(err, ues_ipld::car::CarError::Corrupt(_)), "{err}");
    let cut = &bytes[..bytes.len() - 2];
    let err = CarReader::new(cut).unwrap().next().unwrap().unwrap_err();
    assert!(matches!(err, ues_ipld::car::CarError::Truncated(_)), "{err}");
    // An absurd declared section length is refused before allocating.
    let mut huge = bytes[..bytes.len() - data.len() - 37].to_vec();
    huge.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
    let err = CarReader::new(&huge[..]).unwrap().next().unwrap().unwrap_err();
    assert!(matches!(err, ues_ipld::car::CarError::TooLarge { .. }), "{err}");
}

#[tokio::test]
async fn async_car_writer_and_reader_stream() {
    use ues_ipld::car::{AsyncCarReader, AsyncCarWriter, CarLimits};
    let blocks: Vec<_> = (0..1000u32)
        .map(|i| {
            let d = i.to_be_bytes().repeat(50);
            (cid_sha256(0x55, &d), d)
        })
        .collect();
    let (client, server) = tokio::io::duplex(4096); // a small pipe: both sides must stream
    let roots = vec![blocks[0].0];
    let to_write = blocks.clone();
    let writer = tokio::spawn(async move {
        let mut w = AsyncCarWriter::new(client, &roots).await.unwrap();
        for (c, d) in &to_write {
            w.write_block(c, d).await.unwrap();
        }
        w.finish().await.unwrap();
    });
    let mut r = AsyncCarReader::new(server, CarLimits::default()).await.unwrap();
    assert_eq!(r.roots(), &[blocks[0].0]);
    let mut got = Vec::new();
    while let Some(b) = r.next_block().await.unwrap() {
        got.push(b);
    }
    writer.await.unwrap();
    assert_eq!(got, blocks);
}
