//! The Lexicon documents built into the binary (the `lexicons/` folder at build time).

/// Every embedded document, as JSON text.
pub(crate) const EMBEDDED: &[&str] = &[
    include_str!("../lexicons/app/bsky/actor/profile.json"),
    include_str!("../lexicons/app/bsky/embed/defs.json"),
    include_str!("../lexicons/app/bsky/embed/external.json"),
    include_str!("../lexicons/app/bsky/embed/images.json"),
    include_str!("../lexicons/app/bsky/embed/record.json"),
    include_str!("../lexicons/app/bsky/embed/recordWithMedia.json"),
    include_str!("../lexicons/app/bsky/embed/video.json"),
    include_str!("../lexicons/app/bsky/feed/like.json"),
    include_str!("../lexicons/app/bsky/feed/post.json"),
    include_str!("../lexicons/app/bsky/feed/repost.json"),
    include_str!("../lexicons/app/bsky/graph/block.json"),
    include_str!("../lexicons/app/bsky/graph/follow.json"),
    include_str!("../lexicons/app/bsky/richtext/facet.json"),
    include_str!("../lexicons/com/atproto/label/defs.json"),
    include_str!("../lexicons/com/atproto/repo/strongRef.json"),
];
