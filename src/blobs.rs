//! `ues blobs migrate`: moves a stopped node's blobs between the data directory and the
//! object store of `[storage.s3]`, one at a time, each copy checked by its CID before the old
//! one goes. A move cut off leaves every blob whole in one place or the other, so running
//! it again goes on from where it stopped.

use std::sync::Arc;

use anyhow::Context;
use ues_storage::BlobPlace;

use crate::config::Config;

/// Moves every blob held to `to`; returns a summary. Fails when a blob could not be moved
/// (the others still are; each failure is logged).
pub(crate) fn migrate(cfg: &Config, to: BlobPlace) -> anyhow::Result<serde_json::Value> {
    let storage = ues_storage::Storage::open(&cfg.data_dir, &cfg.storage_config()).map_err(|e| match e {
        ues_storage::Error::Locked { .. } => anyhow::anyhow!("{e}: stop the node before moving its blobs"),
        e => anyhow::Error::from(e).context(format!("opening storage in {}", cfg.data_dir.display())),
    })?;
    let (objects, _) = cfg
        .blob_objects()?
        .context("no object store: [storage.s3] names no bucket (blobs move between it and the disk)")?;
    let store = ues_repo::blobs::BlobStore::new(
        storage.rocks.blockstore(),
        storage.rocks.kv(),
        storage.sqlite.clone(),
        ues_repo::blobs::BlobLimits::default(),
    )
    .with_objects(objects.clone() as Arc<dyn ues_storage::Objects>, to)?;
    let held = store.stored()?;
    let todo: Vec<_> = held.iter().filter(|(_, _, place)| *place != to).collect();
    let bytes: u64 = todo.iter().map(|(_, size, _)| size).sum();
    tracing::info!(blobs = todo.len(), bytes, %to, store = %ues_storage::Objects::describe(objects.as_ref()), "moving blobs");
    let bar = indicatif::ProgressBar::new(bytes).with_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    let (mut moved, mut failed) = (0usize, Vec::new());
    for (i, (cid, size, _)) in todo.iter().enumerate() {
        bar.set_message(format!("{}/{}", i + 1, todo.len()));
        match store.relocate(cid, to) {
            Ok(_) => moved += 1,
            Err(e) => {
                bar.suspend(|| tracing::warn!(%cid, error = %e, "blob not moved"));
                failed.push(serde_json::json!({ "cid": cid.to_string(), "error": e.to_string() }));
            }
        }
        bar.inc(*size);
    }
    bar.finish_and_clear();
    let summary = serde_json::json!({
        "to": to.to_string(),
        "store": ues_storage::Objects::describe(objects.as_ref()),
        "blobs": held.len(),
        "moved": moved,
        "bytes": bytes,
        "alreadyThere": held.len() - todo.len(),
        "failed": failed,
    });
    anyhow::ensure!(failed.is_empty(), "{} blobs were not moved: {summary}", failed.len());
    Ok(summary)
}
