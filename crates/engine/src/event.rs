//! The stored event and its compact binary batch encoding.
//!
//! # Batch payload format (version 1)
//!
//! All integers are little-endian. A batch payload is:
//!
//! ```text
//! u8   format version (= 1)
//! u32  event count N
//! N × event:
//!     u128 uuid
//!     i64  project_id
//!     i64  timestamp_us
//!     i64  received_us
//!     varint len + UTF-8 bytes   event
//!     varint len + UTF-8 bytes   distinct_id
//!     varint len + UTF-8 bytes   properties (JSON object text, stored verbatim)
//! ```
//!
//! Varints are unsigned LEB128 (7 bits per byte, high bit = continuation, at most 10
//! bytes). The payload must end exactly after the N-th event.
//!
//! # Padded batches (version 2)
//!
//! Appends always write version 1. A batch rewritten in place by an erasure or retention pass
//! ([`crate::Intake::rewrite`]) must keep its exact byte length, so that every LSN and batch
//! boundary of the log stays valid: it is written as version 2, the same layout followed by zero
//! bytes up to the original length. Decoders treat the zeros as padding (any other trailing byte
//! is still an error), so a version-2 batch reads as the events that were kept.
//!
//! Decoding never panics: every malformed input (truncation, bad version, impossible
//! count, overlong varint, invalid UTF-8, trailing bytes) returns a [`DecodeError`].
//! [`BatchRef`] decodes without allocating: its events are [`EventRef`]s borrowing
//! the payload.

use std::fmt;

/// Format version written as the first byte of every batch payload.
pub const BATCH_FORMAT_VERSION: u8 = 1;

/// Format version of a batch rewritten in place: version 1's layout followed by zero padding (see the
/// [module docs](self#padded-batches-version-2)).
pub const PADDED_BATCH_FORMAT_VERSION: u8 = 2;

/// Version byte + u32 count.
pub const BATCH_HEADER_LEN: usize = 5;

/// uuid + project_id + timestamp_us + received_us.
const EVENT_FIXED_LEN: usize = 16 + 8 + 8 + 8;

/// Smallest possible encoded event: fixed part + three one-byte (empty) string lengths.
const MIN_EVENT_LEN: usize = EVENT_FIXED_LEN + 3;

/// One stored event. Strings are owned; `properties` is the JSON object text (already
/// serialized by the server).
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// Event UUID (deduplication key).
    pub uuid: u128,
    /// Owning project.
    pub project_id: i64,
    /// Event time, microseconds since the Unix epoch (UTC).
    pub timestamp_us: i64,
    /// Server receive time, microseconds since the Unix epoch (UTC).
    pub received_us: i64,
    /// Event name, e.g. `$pageview`.
    pub event: String,
    /// The identity that performed the event.
    pub distinct_id: String,
    /// JSON object text.
    pub properties: String,
}

impl Event {
    /// Borrowing view of this event.
    pub fn as_event_ref(&self) -> EventRef<'_> {
        EventRef {
            uuid: self.uuid,
            project_id: self.project_id,
            timestamp_us: self.timestamp_us,
            received_us: self.received_us,
            event: &self.event,
            distinct_id: &self.distinct_id,
            properties: &self.properties,
        }
    }
}

/// A decoded event borrowing its strings from a batch payload (zero-copy scans).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventRef<'a> {
    /// Event UUID.
    pub uuid: u128,
    /// Owning project.
    pub project_id: i64,
    /// Event time, microseconds since the Unix epoch (UTC).
    pub timestamp_us: i64,
    /// Server receive time, microseconds since the Unix epoch (UTC).
    pub received_us: i64,
    /// Event name.
    pub event: &'a str,
    /// The identity that performed the event.
    pub distinct_id: &'a str,
    /// JSON object text.
    pub properties: &'a str,
}

impl EventRef<'_> {
    /// Copy into an owned [`Event`].
    pub fn to_event(&self) -> Event {
        Event {
            uuid: self.uuid,
            project_id: self.project_id,
            timestamp_us: self.timestamp_us,
            received_us: self.received_us,
            event: self.event.to_owned(),
            distinct_id: self.distinct_id.to_owned(),
            properties: self.properties.to_owned(),
        }
    }
}

/// Why a batch payload could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The payload is shorter than the batch header.
    #[error("batch payload of {0} bytes is shorter than the 5-byte header")]
    ShortHeader(usize),
    /// The version byte is not one this build understands.
    #[error("unsupported batch format version {0}")]
    UnsupportedVersion(u8),
    /// The event count cannot possibly fit in the payload.
    #[error("event count {count} cannot fit in a {len}-byte payload")]
    ImplausibleCount {
        /// Declared count.
        count: u32,
        /// Payload length.
        len: usize,
    },
    /// The payload ends in the middle of an event.
    #[error("unexpected end of batch payload at byte {0}")]
    UnexpectedEof(usize),
    /// A length varint is longer than 10 bytes or overflows u64.
    #[error("malformed varint at byte {0}")]
    BadVarint(usize),
    /// A string is not valid UTF-8.
    #[error("invalid UTF-8 in string at byte {0}")]
    InvalidUtf8(usize),
    /// Bytes remain after the last declared event.
    #[error("{0} trailing bytes after the last event")]
    TrailingBytes(usize),
    /// The payload is longer than the padded length asked for (see [`encode_padded_batch`]).
    #[error("{needed} bytes of events do not fit in a {len}-byte padded batch")]
    DoesNotFit {
        /// Bytes the events need.
        needed: usize,
        /// The padded length asked for.
        len: usize,
    },
}

#[inline]
fn varint_len(v: usize) -> usize {
    (usize::BITS - (v | 1).leading_zeros()).div_ceil(7) as usize
}

#[inline]
fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

#[inline]
fn put_str(out: &mut Vec<u8>, s: &str) {
    put_varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

#[inline]
fn str_encoded_len(s: &str) -> usize {
    varint_len(s.len()) + s.len()
}

/// Exact number of bytes [`encode_batch`] appends for `events`.
pub fn encoded_len(events: &[Event]) -> usize {
    BATCH_HEADER_LEN
        + events
            .iter()
            .map(|e| {
                EVENT_FIXED_LEN
                    + str_encoded_len(&e.event)
                    + str_encoded_len(&e.distinct_id)
                    + str_encoded_len(&e.properties)
            })
            .sum::<usize>()
}

fn put_event(out: &mut Vec<u8>, e: &EventRef<'_>) {
    out.extend_from_slice(&e.uuid.to_le_bytes());
    out.extend_from_slice(&e.project_id.to_le_bytes());
    out.extend_from_slice(&e.timestamp_us.to_le_bytes());
    out.extend_from_slice(&e.received_us.to_le_bytes());
    put_str(out, e.event);
    put_str(out, e.distinct_id);
    put_str(out, e.properties);
}

/// Bytes one event takes in a batch payload.
pub fn event_encoded_len(e: &EventRef<'_>) -> usize {
    EVENT_FIXED_LEN
        + str_encoded_len(e.event)
        + str_encoded_len(e.distinct_id)
        + str_encoded_len(e.properties)
}

/// Append a batch payload of exactly `len` bytes holding `events` to `out`: version 1 when the events fill it
/// exactly, else version 2 (zero padding after the last event; see the [module docs](self#padded-batches-version-2)).
/// Fails, appending nothing, when the events need more than `len` bytes.
pub fn encode_padded_batch(
    events: &[EventRef<'_>],
    len: usize,
    out: &mut Vec<u8>,
) -> Result<(), DecodeError> {
    let needed = BATCH_HEADER_LEN + events.iter().map(event_encoded_len).sum::<usize>();
    let count = u32::try_from(events.len()).map_err(|_| DecodeError::DoesNotFit { needed, len })?;
    if needed > len {
        return Err(DecodeError::DoesNotFit { needed, len });
    }
    out.reserve(len);
    out.push(if needed == len {
        BATCH_FORMAT_VERSION
    } else {
        PADDED_BATCH_FORMAT_VERSION
    });
    out.extend_from_slice(&count.to_le_bytes());
    for e in events {
        put_event(out, e);
    }
    out.resize(out.len() + (len - needed), 0);
    Ok(())
}

/// Append the encoded batch payload for `events` to `out` (the buffer is reserved to the
/// exact size first; existing contents are kept).
///
/// # Panics
///
/// If `events.len()` exceeds `u32::MAX`.
pub fn encode_batch(events: &[Event], out: &mut Vec<u8>) {
    let count = u32::try_from(events.len()).expect("batch has more than u32::MAX events");
    out.reserve(encoded_len(events));
    out.push(BATCH_FORMAT_VERSION);
    out.extend_from_slice(&count.to_le_bytes());
    for e in events {
        put_event(out, &e.as_event_ref());
    }
}

/// Decode a batch payload into owned events.
pub fn decode_batch(payload: &[u8]) -> Result<Vec<Event>, DecodeError> {
    let batch = BatchRef::new(payload)?;
    let mut out = Vec::with_capacity(batch.len());
    for ev in batch.iter() {
        out.push(ev?.to_event());
    }
    Ok(out)
}

/// A validated-header view of one batch payload. Events are decoded lazily, without
/// allocation, by [`BatchRef::iter`] (oldest first) or [`BatchRef::iter_rev`] (newest
/// first).
#[derive(Clone, Copy)]
pub struct BatchRef<'a> {
    buf: &'a [u8],
    count: u32,
    /// A version-2 batch: zero bytes may follow the last event.
    padded: bool,
}

impl fmt::Debug for BatchRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchRef")
            .field("bytes", &self.buf.len())
            .field("count", &self.count)
            .finish()
    }
}

impl<'a> BatchRef<'a> {
    /// Check the header (version byte, plausible count). The events themselves are
    /// checked as they are iterated, or all at once by [`BatchRef::validate`].
    pub fn new(payload: &'a [u8]) -> Result<Self, DecodeError> {
        let count = peek_header(payload)?;
        Ok(BatchRef {
            buf: payload,
            count,
            padded: payload[0] == PADDED_BATCH_FORMAT_VERSION,
        })
    }

    /// Number of events declared by the header.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// `true` when the batch declares no events.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The raw payload.
    pub fn payload(&self) -> &'a [u8] {
        self.buf
    }

    /// Whether this is a version-2 (rewritten, zero-padded) batch.
    pub fn is_padded(&self) -> bool {
        self.padded
    }

    /// Iterate events oldest first. Yields an error (and then stops) at the first
    /// malformed event, or if bytes remain after the last one.
    pub fn iter(&self) -> BatchIter<'a> {
        BatchIter {
            buf: self.buf,
            pos: BATCH_HEADER_LEN,
            remaining: self.count,
            done: false,
            padded: self.padded,
        }
    }

    /// Decode every event (including UTF-8 checks) without keeping them.
    pub fn validate(&self) -> Result<(), DecodeError> {
        for ev in self.iter() {
            ev?;
        }
        Ok(())
    }

    /// Iterate events newest first. `scratch` holds the event start offsets (found by a
    /// cheap forward pass that skips strings) so repeated calls reuse one allocation.
    pub fn iter_rev<'s>(
        &self,
        scratch: &'s mut Vec<u32>,
    ) -> Result<BatchRevIter<'a, 's>, DecodeError> {
        scratch.clear();
        scratch.reserve(self.len());
        let mut pos = BATCH_HEADER_LEN;
        for _ in 0..self.count {
            // Payloads are bounded by the WAL record size limit, far below u32::MAX.
            let off = u32::try_from(pos).map_err(|_| DecodeError::UnexpectedEof(pos))?;
            scratch.push(off);
            skip_event(self.buf, &mut pos)?;
        }
        check_end(self.buf, pos, self.padded)?;
        Ok(BatchRevIter {
            buf: self.buf,
            offsets: scratch,
        })
    }
}

impl<'a> IntoIterator for &BatchRef<'a> {
    type Item = Result<EventRef<'a>, DecodeError>;
    type IntoIter = BatchIter<'a>;
    fn into_iter(self) -> BatchIter<'a> {
        self.iter()
    }
}

/// What follows the last event at `pos`: nothing, or (in a padded batch) zero bytes only.
fn check_end(buf: &[u8], pos: usize, padded: bool) -> Result<(), DecodeError> {
    let rest = &buf[pos.min(buf.len())..];
    if rest.is_empty() || (padded && rest.iter().all(|&b| b == 0)) {
        Ok(())
    } else {
        Err(DecodeError::TrailingBytes(rest.len()))
    }
}

/// Read and sanity-check the batch header, returning the declared event count.
pub(crate) fn peek_header(payload: &[u8]) -> Result<u32, DecodeError> {
    let Some(header) = payload.get(..BATCH_HEADER_LEN) else {
        return Err(DecodeError::ShortHeader(payload.len()));
    };
    if header[0] != BATCH_FORMAT_VERSION && header[0] != PADDED_BATCH_FORMAT_VERSION {
        return Err(DecodeError::UnsupportedVersion(header[0]));
    }
    let count = u32::from_le_bytes([header[1], header[2], header[3], header[4]]);
    let room = payload.len() - BATCH_HEADER_LEN;
    if (count as usize) > room / MIN_EVENT_LEN {
        return Err(DecodeError::ImplausibleCount {
            count,
            len: payload.len(),
        });
    }
    Ok(count)
}

/// Forward iterator over a batch; see [`BatchRef::iter`].
#[derive(Clone, Debug)]
pub struct BatchIter<'a> {
    buf: &'a [u8],
    pos: usize,
    remaining: u32,
    done: bool,
    padded: bool,
}

impl<'a> Iterator for BatchIter<'a> {
    type Item = Result<EventRef<'a>, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        if self.remaining == 0 {
            self.done = true;
            return check_end(self.buf, self.pos, self.padded).err().map(Err);
        }
        self.remaining -= 1;
        let res = decode_event(self.buf, &mut self.pos);
        if res.is_err() {
            self.done = true;
        }
        Some(res)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        if self.done {
            (0, Some(0))
        } else {
            (0, Some(self.remaining as usize + 1))
        }
    }
}

/// Reverse iterator over a batch; see [`BatchRef::iter_rev`].
#[derive(Debug)]
pub struct BatchRevIter<'a, 's> {
    buf: &'a [u8],
    offsets: &'s [u32],
}

impl<'a> Iterator for BatchRevIter<'a, '_> {
    type Item = Result<EventRef<'a>, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        let (&last, rest) = self.offsets.split_last()?;
        self.offsets = rest;
        let mut pos = last as usize;
        let res = decode_event(self.buf, &mut pos);
        if res.is_err() {
            self.offsets = &[];
        }
        Some(res)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.offsets.len()))
    }
}

#[inline]
fn read_varint(buf: &[u8], pos: &mut usize) -> Result<u64, DecodeError> {
    let start = *pos;
    let mut result = 0u64;
    let mut shift = 0u32;
    loop {
        let Some(&b) = buf.get(*pos) else {
            return Err(DecodeError::UnexpectedEof(*pos));
        };
        *pos += 1;
        if shift == 63 && b > 1 {
            return Err(DecodeError::BadVarint(start));
        }
        result |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(result);
        }
        shift += 7;
    }
}

#[inline]
fn read_bytes<'a>(buf: &'a [u8], pos: &mut usize) -> Result<&'a [u8], DecodeError> {
    let len = read_varint(buf, pos)?;
    let start = *pos;
    let avail = (buf.len() - start) as u64;
    if len > avail {
        return Err(DecodeError::UnexpectedEof(buf.len()));
    }
    let end = start + len as usize;
    *pos = end;
    Ok(&buf[start..end])
}

#[inline]
fn read_str<'a>(buf: &'a [u8], pos: &mut usize) -> Result<&'a str, DecodeError> {
    let at = *pos;
    let bytes = read_bytes(buf, pos)?;
    std::str::from_utf8(bytes).map_err(|_| DecodeError::InvalidUtf8(at))
}

#[inline]
fn fixed_part(buf: &[u8], pos: usize) -> Result<&[u8; EVENT_FIXED_LEN], DecodeError> {
    buf.get(pos..)
        .and_then(|rest| rest.first_chunk::<EVENT_FIXED_LEN>())
        .ok_or(DecodeError::UnexpectedEof(buf.len()))
}

fn decode_event<'a>(buf: &'a [u8], pos: &mut usize) -> Result<EventRef<'a>, DecodeError> {
    let fixed = fixed_part(buf, *pos)?;
    let (uuid, rest) = fixed.split_first_chunk::<16>().expect("40 >= 16");
    let (project_id, rest) = rest.split_first_chunk::<8>().expect("24 >= 8");
    let (timestamp_us, rest) = rest.split_first_chunk::<8>().expect("16 >= 8");
    let (received_us, _) = rest.split_first_chunk::<8>().expect("8 >= 8");
    let uuid = u128::from_le_bytes(*uuid);
    let project_id = i64::from_le_bytes(*project_id);
    let timestamp_us = i64::from_le_bytes(*timestamp_us);
    let received_us = i64::from_le_bytes(*received_us);
    *pos += EVENT_FIXED_LEN;
    let event = read_str(buf, pos)?;
    let distinct_id = read_str(buf, pos)?;
    let properties = read_str(buf, pos)?;
    Ok(EventRef {
        uuid,
        project_id,
        timestamp_us,
        received_us,
        event,
        distinct_id,
        properties,
    })
}

fn skip_event(buf: &[u8], pos: &mut usize) -> Result<(), DecodeError> {
    fixed_part(buf, *pos)?;
    *pos += EVENT_FIXED_LEN;
    for _ in 0..3 {
        read_bytes(buf, pos)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ev(i: u32) -> Event {
        Event {
            uuid: (u128::from(i) << 64) | 0xdead_beef,
            project_id: i64::from(i % 3) - 1,
            timestamp_us: 1_700_000_000_000_000 + i64::from(i),
            received_us: -i64::from(i),
            event: format!("event-{i}"),
            distinct_id: "user-é-ü-😀".repeat(i as usize % 4),
            properties: format!("{{\"i\":{i},\"pad\":\"{}\"}}", "x".repeat(i as usize * 37)),
        }
    }

    #[test]
    fn roundtrip_and_exact_len() {
        for n in [0u32, 1, 2, 17, 100] {
            let events: Vec<Event> = (0..n).map(ev).collect();
            let mut buf = vec![0xAA; 3];
            encode_batch(&events, &mut buf);
            assert_eq!(buf.len() - 3, encoded_len(&events));
            assert_eq!(decode_batch(&buf[3..]).unwrap(), events);
            let batch = BatchRef::new(&buf[3..]).unwrap();
            assert_eq!(batch.len(), n as usize);
            batch.validate().unwrap();
            let mut scratch = Vec::new();
            let rev: Vec<Event> = batch
                .iter_rev(&mut scratch)
                .unwrap()
                .map(|e| e.unwrap().to_event())
                .collect();
            let mut expected = events.clone();
            expected.reverse();
            assert_eq!(rev, expected);
        }
    }

    #[test]
    fn varint_lengths() {
        for v in [0usize, 1, 127, 128, 16383, 16384, 1 << 21, usize::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, v as u64);
            assert_eq!(out.len(), varint_len(v), "{v}");
            let mut pos = 0;
            assert_eq!(read_varint(&out, &mut pos).unwrap(), v as u64);
            assert_eq!(pos, out.len());
        }
        // 11-byte varint and u64 overflow are rejected.
        let mut pos = 0;
        assert!(read_varint(&[0xFF; 11], &mut pos).is_err());
        let mut pos = 0;
        let mut over = vec![0xFF; 9];
        over.push(0x02);
        assert_eq!(read_varint(&over, &mut pos), Err(DecodeError::BadVarint(0)));
    }

    #[test]
    fn every_truncation_is_an_error() {
        let events: Vec<Event> = (0..5).map(ev).collect();
        let mut buf = Vec::new();
        encode_batch(&events, &mut buf);
        for cut in 0..buf.len() {
            assert!(decode_batch(&buf[..cut]).is_err(), "prefix {cut} decoded");
            if let Ok(b) = BatchRef::new(&buf[..cut]) {
                let mut s = Vec::new();
                assert!(b.iter_rev(&mut s).is_err());
                assert!(b.validate().is_err());
            }
        }
        let mut extra = buf.clone();
        extra.push(0);
        assert_eq!(decode_batch(&extra), Err(DecodeError::TrailingBytes(1)));
    }

    #[test]
    fn bad_header_and_utf8() {
        assert_eq!(decode_batch(&[]), Err(DecodeError::ShortHeader(0)));
        assert_eq!(
            decode_batch(&[3, 0, 0, 0, 0]),
            Err(DecodeError::UnsupportedVersion(3))
        );
        assert!(matches!(
            decode_batch(&[1, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0]),
            Err(DecodeError::ImplausibleCount { .. })
        ));
        let e = Event {
            uuid: 1,
            project_id: 1,
            timestamp_us: 1,
            received_us: 1,
            event: "ab".into(),
            distinct_id: String::new(),
            properties: "{}".into(),
        };
        let mut buf = Vec::new();
        encode_batch(std::slice::from_ref(&e), &mut buf);
        let ev_at = BATCH_HEADER_LEN + EVENT_FIXED_LEN + 1;
        buf[ev_at] = 0xFF;
        assert!(matches!(
            decode_batch(&buf),
            Err(DecodeError::InvalidUtf8(_))
        ));
    }

    #[test]
    fn padded_batches_keep_their_length_and_read_as_the_kept_events() {
        let events: Vec<Event> = (0..6).map(ev).collect();
        let mut full = Vec::new();
        encode_batch(&events, &mut full);
        let kept: Vec<EventRef<'_>> = events
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 2 == 0)
            .map(|(_, e)| e.as_event_ref())
            .collect();
        let mut padded = Vec::new();
        encode_padded_batch(&kept, full.len(), &mut padded).unwrap();
        assert_eq!(padded.len(), full.len());
        assert_eq!(padded[0], PADDED_BATCH_FORMAT_VERSION);
        let decoded = decode_batch(&padded).unwrap();
        let expected: Vec<Event> = kept.iter().map(EventRef::to_event).collect();
        assert_eq!(decoded, expected);
        let mut s = Vec::new();
        assert_eq!(
            BatchRef::new(&padded)
                .unwrap()
                .iter_rev(&mut s)
                .unwrap()
                .count(),
            3
        );
        // Nothing kept: still a valid, empty batch of the same length.
        let mut empty = Vec::new();
        encode_padded_batch(&[], full.len(), &mut empty).unwrap();
        assert_eq!(empty.len(), full.len());
        assert!(decode_batch(&empty).unwrap().is_empty());
        // Exactly full: written as version 1.
        let all: Vec<EventRef<'_>> = events.iter().map(Event::as_event_ref).collect();
        let mut same = Vec::new();
        encode_padded_batch(&all, full.len(), &mut same).unwrap();
        assert_eq!(same, full);
        // Too long: refused; a non-zero byte in the padding is corruption.
        assert!(encode_padded_batch(&all, full.len() - 1, &mut Vec::new()).is_err());
        let last = padded.len() - 1;
        padded[last] = 7;
        assert_eq!(
            decode_batch(&padded),
            Err(DecodeError::TrailingBytes(
                padded.len() - BATCH_HEADER_LEN - kept.iter().map(event_encoded_len).sum::<usize>()
            ))
        );
        // Version 1 never accepts padding.
        let mut v1 = full.clone();
        v1.extend_from_slice(&[0, 0]);
        assert_eq!(decode_batch(&v1), Err(DecodeError::TrailingBytes(2)));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_batch(&bytes);
            if let Ok(b) = BatchRef::new(&bytes) {
                let _ = b.validate();
                let mut s = Vec::new();
                if let Ok(it) = b.iter_rev(&mut s) {
                    for e in it { let _ = e; }
                }
            }
        }

        #[test]
        fn random_bytes_after_valid_header_never_panic(
            count in 0u32..8,
            body in proptest::collection::vec(any::<u8>(), 0..600),
        ) {
            let mut bytes = vec![BATCH_FORMAT_VERSION];
            bytes.extend_from_slice(&count.to_le_bytes());
            bytes.extend_from_slice(&body);
            let _ = decode_batch(&bytes);
            if let Ok(b) = BatchRef::new(&bytes) {
                let mut s = Vec::new();
                if let Ok(it) = b.iter_rev(&mut s) {
                    for e in it { let _ = e; }
                }
            }
        }

        #[test]
        fn mutated_valid_batches_never_panic(
            n in 1u32..6,
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        ) {
            let events: Vec<Event> = (0..n).map(ev).collect();
            let mut buf = Vec::new();
            encode_batch(&events, &mut buf);
            for (idx, val) in flips {
                let i = idx.index(buf.len());
                buf[i] = val;
            }
            let _ = decode_batch(&buf);
        }

        #[test]
        fn roundtrip_arbitrary(
            items in proptest::collection::vec(
                (any::<u128>(), any::<i64>(), any::<i64>(), any::<i64>(), ".{0,20}", ".{0,40}", ".{0,300}"),
                0..20,
            )
        ) {
            let events: Vec<Event> = items
                .into_iter()
                .map(|(uuid, project_id, timestamp_us, received_us, event, distinct_id, properties)| Event {
                    uuid, project_id, timestamp_us, received_us, event, distinct_id, properties,
                })
                .collect();
            let mut buf = Vec::new();
            encode_batch(&events, &mut buf);
            prop_assert_eq!(buf.len(), encoded_len(&events));
            prop_assert_eq!(decode_batch(&buf).unwrap(), events);
        }
    }
}
