//! The process-wide store of cached assets: a size-weighted concurrent cache of
//! ready-to-send responses.
//!
//! Each entry keeps the identity body and, for compressible types, its gzip variant, each
//! with a prebuilt response header, so a hit is a map lookup, a header clone and a
//! reference-counted body: no copy, no compression on the way out.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use bytes::Bytes;
use http::{header, HeaderName, HeaderValue, StatusCode};
use pingora::http::ResponseHeader;
use quick_cache::sync::Cache;
use quick_cache::{OptionsBuilder, Weighter};

use crate::compress;
use crate::config::CacheConfig;

pub(super) static X_CACHE: HeaderName = HeaderName::from_static("x-cache");
static HIT: HeaderValue = HeaderValue::from_static("HIT");
pub(super) static IMMUTABLE: HeaderValue =
    HeaderValue::from_static("public, max-age=31536000, immutable");

/// Bytes counted for an entry beyond its bodies and headers: the `Entry`, its `Arc`, the
/// header maps' tables and the cache's own slot.
const ENTRY_OVERHEAD: u64 = 1024;
/// Bytes counted per stored header beyond its name and value.
const HEADER_OVERHEAD: u64 = 64;
/// Expected average size of a stored asset; only sizes the cache's tables.
const TYPICAL_OBJECT: u64 = 32 * 1024;
/// Most shards the cache is split into (lock contention is already negligible at this).
const MAX_SHARDS: u64 = 16;

/// One cached response (always a `200` to a `GET`).
#[derive(Debug)]
pub(crate) struct Entry {
    pub identity: Variant,
    /// `Some` for compressible types that gzip made smaller.
    pub gzip: Option<Variant>,
    /// The `304` sent to a matching conditional request.
    pub not_modified: ResponseHeader,
    pub etag: Option<HeaderValue>,
    pub last_modified: Option<SystemTime>,
    /// Lower-cased media type, checked against the current `gzip.types` on every hit.
    pub media_type: Option<Box<str>>,
    weight: u64,
}

/// A body and the header that goes with it.
#[derive(Debug)]
pub(crate) struct Variant {
    pub head: ResponseHeader,
    pub body: Bytes,
}

impl Entry {
    /// Builds the entry from the upstream's header (hop-by-hop and cache headers already
    /// removed) and its complete body. `gzip_level` asks for the gzip variant; `vary` adds
    /// `Accept-Encoding` to `Vary` (a compressible type).
    pub(crate) fn build(
        mut head: ResponseHeader,
        body: Bytes,
        gzip_level: Option<u32>,
        vary: bool,
    ) -> pingora::Result<Entry> {
        head.insert_header(header::CACHE_CONTROL, IMMUTABLE.clone())?;
        head.insert_header(X_CACHE.clone(), HIT.clone())?;
        if vary {
            compress::merge_vary(&mut head)?;
        }
        let etag = head.headers.get(header::ETAG).cloned();
        let last_modified = head
            .headers
            .get(header::LAST_MODIFIED)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| httpdate::parse_http_date(v).ok());
        let media_type = head
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(compress::media_type)
            .map(|m| m.to_ascii_lowercase().into_boxed_str());

        let mut not_modified = ResponseHeader::build(StatusCode::NOT_MODIFIED, Some(8))?;
        for name in [
            header::ETAG,
            header::LAST_MODIFIED,
            header::CACHE_CONTROL,
            header::VARY,
            X_CACHE.clone(),
        ] {
            for value in head.headers.get_all(&name) {
                not_modified.append_header(name.clone(), value.clone())?;
            }
        }

        let gzip = match gzip_level.and_then(|level| compress::gzip_all(&body, level)) {
            Some(gz) => {
                let mut gz_head = head.clone();
                gz_head.insert_header(header::CONTENT_ENCODING, "gzip")?;
                gz_head.insert_header(header::CONTENT_LENGTH, gz.len())?;
                gz_head.remove_header(&header::ACCEPT_RANGES);
                if let Some(weak) = etag.as_ref().and_then(compress::weak_etag) {
                    gz_head.insert_header(header::ETAG, weak)?;
                }
                Some(Variant {
                    head: gz_head,
                    body: gz,
                })
            }
            None => None,
        };
        head.insert_header(header::CONTENT_LENGTH, body.len())?;

        let header_bytes = |h: &ResponseHeader| -> u64 {
            h.headers
                .iter()
                .map(|(k, v)| (k.as_str().len() + v.len()) as u64 + HEADER_OVERHEAD)
                .sum()
        };
        let weight = ENTRY_OVERHEAD
            + body.len() as u64
            + header_bytes(&head)
            + header_bytes(&not_modified)
            + gzip
                .as_ref()
                .map_or(0, |g| g.body.len() as u64 + header_bytes(&g.head));
        Ok(Entry {
            identity: Variant { head, body },
            gzip,
            not_modified,
            etag,
            last_modified,
            media_type,
            weight,
        })
    }

    /// What the entry counts against `max_size`.
    #[cfg(test)]
    pub(crate) fn weight(&self) -> u64 {
        self.weight
    }
}

#[derive(Debug, Clone, Copy)]
struct BySize;

impl Weighter<String, Arc<Entry>> for BySize {
    fn weight(&self, key: &String, entry: &Arc<Entry>) -> u64 {
        entry.weight + key.len() as u64
    }
}

/// `max_object_size`, within what a shard of `shard_cap` admits: quick_cache admits an
/// entry up to 97 % of a shard ("hot" share); stay below it.
fn object_cap(max_object_size: u64, shard_cap: u64) -> u64 {
    max_object_size.min(shard_cap / 100 * 90)
}

/// The size-bounded store. quick_cache evicts with a CLOCK-Pro variant: entries that were
/// never hit again go first, in insertion order; an entry that was hit gets a second chance.
pub(crate) struct Store {
    cache: Cache<String, Arc<Entry>, BySize>,
    /// Largest body that may be stored: the configured `max_object_size`, and never more
    /// than a shard can hold (a larger one would be refused by the cache anyway).
    object_cap: AtomicU64,
    /// The `[cache]` settings the store follows now: a reload that changes them resizes
    /// it ([`Store::follow`]); the shard count stays the one chosen at creation.
    max_size: AtomicU64,
    max_object_size: AtomicU64,
    /// Serialises resizes (rare: a reload), never taken by a lookup.
    resizing: Mutex<()>,
}

impl Store {
    pub(crate) fn new(config: CacheConfig) -> Store {
        let max_size = config.max_size.max(1);
        // quick_cache splits the capacity between shards and refuses an entry heavier than
        // its shard: keep every shard able to hold two of the largest objects.
        let mut shards = MAX_SHARDS;
        while shards > 1 && max_size / shards < config.max_object_size.saturating_mul(2) {
            shards /= 2;
        }
        let items = (max_size / TYPICAL_OBJECT).max(32 * shards);
        let options = OptionsBuilder::new()
            .shards(shards as usize)
            .estimated_items_capacity(usize::try_from(items).unwrap_or(usize::MAX))
            .weight_capacity(max_size)
            .build();
        let cache = match options {
            Ok(options) => {
                Cache::with_options(options, BySize, Default::default(), Default::default())
            }
            // Unreachable: both required options are set above.
            Err(_) => Cache::with_weighter(items as usize, max_size, BySize),
        };
        let object_cap = object_cap(config.max_object_size, cache.shard_capacity());
        Store {
            cache,
            object_cap: AtomicU64::new(object_cap),
            max_size: AtomicU64::new(max_size),
            max_object_size: AtomicU64::new(config.max_object_size),
            resizing: Mutex::new(()),
        }
    }

    /// Follows the request's `[cache]` settings (`None`: off): a smaller `max_size` evicts
    /// down to it at once, a larger one makes room. Two atomic loads when nothing changed.
    pub(crate) fn follow(&self, config: Option<CacheConfig>) {
        let (max_size, max_object_size) =
            config.map_or((0, 0), |c| (c.max_size.max(1), c.max_object_size));
        if self.max_size.load(Ordering::Relaxed) == max_size
            && self.max_object_size.load(Ordering::Relaxed) == max_object_size
        {
            return;
        }
        let _resizing = self.resizing.lock().unwrap_or_else(PoisonError::into_inner);
        if self.max_size.load(Ordering::Relaxed) != max_size {
            // quick_cache evicts down to the new weight here (CLOCK order)
            self.cache.set_capacity(max_size);
            if max_size == 0 {
                self.cache.clear();
            }
            self.max_size.store(max_size, Ordering::Relaxed);
        }
        let cap = object_cap(max_object_size, self.cache.shard_capacity());
        self.object_cap.store(cap, Ordering::Relaxed);
        self.max_object_size
            .store(max_object_size, Ordering::Relaxed);
    }

    pub(crate) fn get(&self, key: &str) -> Option<Arc<Entry>> {
        self.cache.get(key)
    }

    pub(crate) fn insert(&self, key: String, entry: Entry) {
        if entry.identity.body.len() as u64 <= self.object_cap() {
            self.cache.insert(key, Arc::new(entry));
        }
    }

    pub(crate) fn object_cap(&self) -> u64 {
        self.object_cap.load(Ordering::Relaxed)
    }

    /// Total weight held (bytes, approximately).
    #[cfg(test)]
    pub(crate) fn weight(&self) -> u64 {
        self.cache.weight()
    }

    #[cfg(test)]
    pub(crate) fn capacity(&self) -> u64 {
        self.cache.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(body: &'static [u8]) -> Entry {
        let mut head = ResponseHeader::build(200, None).expect("head");
        head.insert_header(header::CONTENT_TYPE, "text/css")
            .expect("ct");
        Entry::build(head, Bytes::from_static(body), None, false).expect("entry")
    }

    #[test]
    fn stays_within_its_size_and_evicts_the_oldest_untouched() {
        static BODY: [u8; 30_000] = [b'x'; 30_000];
        let store = Store::new(CacheConfig {
            max_size: 128 * 1024,
            max_object_size: 64 * 1024,
        });
        for i in 0..4 {
            store.insert(format!("k{i}"), entry(&BODY));
        }
        assert!(store.get("k0").is_some(), "k0 fits");
        // k0 was hit: it gets a second chance, k1 (never hit) goes first
        store.insert("k4".into(), entry(&BODY));
        assert!(store.weight() <= store.capacity());
        assert!(
            store.get("k1").is_none(),
            "the oldest untouched entry was evicted"
        );
        assert!(store.get("k0").is_some(), "a hit entry survives");
        assert!(store.get("k4").is_some());
    }

    #[test]
    fn a_smaller_size_evicts_at_once_and_off_empties() {
        // Small entries: the cache's shards (their hash is random) never overflow at 1 MiB.
        static BODY: [u8; 8_000] = [b'x'; 8_000];
        let config = |max_size| CacheConfig {
            max_size,
            max_object_size: 64 * 1024,
        };
        let store = Store::new(config(1 << 20));
        for i in 0..20 {
            store.insert(format!("k{i}"), entry(&BODY));
        }
        assert!(store.weight() > 150 * 1024, "{}", store.weight());
        store.follow(Some(config(1 << 20)));
        assert!(store.weight() > 150 * 1024, "same settings: nothing moves");
        store.follow(Some(config(50 * 1024)));
        assert!(store.weight() <= 50 * 1024, "{}", store.weight());
        assert!(store.capacity() <= 50 * 1024 + 16);
        let held = (0..20).filter(|i| store.get(&format!("k{i}")).is_some());
        assert!(held.count() <= 6);
        store.follow(None);
        assert_eq!(store.weight(), 0);
        store.follow(Some(config(1 << 20)));
        store.insert("again".into(), entry(&BODY));
        assert!(
            store.get("again").is_some(),
            "a larger size makes room again"
        );
    }

    #[test]
    fn object_cap_keeps_to_a_shard() {
        let store = Store::new(CacheConfig {
            max_size: 1 << 20,
            max_object_size: 8 << 20,
        });
        assert!(store.object_cap() < 1 << 20);
        static BIG: [u8; 1 << 20] = [0; 1 << 20];
        store.insert("big".into(), entry(&BIG));
        assert!(store.get("big").is_none());
        let store = Store::new(CacheConfig {
            max_size: 256 << 20,
            max_object_size: 8 << 20,
        });
        assert_eq!(store.object_cap(), 8 << 20);
    }

    #[test]
    fn gzip_variant_and_not_modified_head() {
        let mut head = ResponseHeader::build(200, None).expect("head");
        head.insert_header(
            header::CONTENT_TYPE,
            "Application/JavaScript; charset=utf-8",
        )
        .expect("ct");
        head.insert_header(header::ETAG, "\"abc\"").expect("etag");
        head.insert_header(header::LAST_MODIFIED, "Wed, 21 Oct 2015 07:28:00 GMT")
            .expect("lm");
        let body = Bytes::from("var a = 1;\n".repeat(500));
        let entry = Entry::build(head, body.clone(), Some(6), true).expect("entry");
        assert_eq!(entry.media_type.as_deref(), Some("application/javascript"));
        assert_eq!(
            entry.identity.head.headers[header::CONTENT_LENGTH],
            body.len().to_string().as_str()
        );
        assert_eq!(entry.identity.head.headers[header::VARY], "Accept-Encoding");
        let gz = entry.gzip.as_ref().expect("gzip variant");
        assert_eq!(gz.head.headers[header::CONTENT_ENCODING], "gzip");
        assert_eq!(gz.head.headers[header::ETAG], "W/\"abc\"");
        assert_eq!(
            gz.head.headers[header::CONTENT_LENGTH],
            gz.body.len().to_string().as_str()
        );
        assert_eq!(entry.not_modified.status, 304);
        assert_eq!(entry.not_modified.headers[header::ETAG], "\"abc\"");
        assert!(entry
            .not_modified
            .headers
            .get(header::CONTENT_LENGTH)
            .is_none());
        assert!(entry.last_modified.is_some());
        assert!(entry.weight() > (body.len() + gz.body.len()) as u64);
    }
}
