//! Response body collection: decompress (gzip / deflate) on the fly and keep at most the site's
//! body cap, so neither a huge body nor a compression bomb can grow memory past the cap.
//!
//! The probe feeds every data frame to a [`BodySink`]; when it answers [`Fill::Full`] the probe
//! stops reading and drops the connection without draining it.

use std::io::{self, Write};

use bytes::{Bytes, BytesMut};
use flate2::write::{DeflateDecoder, GzDecoder, ZlibDecoder};
use http::HeaderValue;

/// The body encodings the probe undoes. Anything else is kept as sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Encoding {
    Identity,
    Gzip,
    /// HTTP `deflate`: zlib-wrapped per the RFC, but raw deflate from some servers; the first
    /// byte decides which.
    Deflate,
}

impl Encoding {
    /// Reads a `Content-Encoding` value. Stacked (`gzip, br`) or unknown encodings give
    /// `Identity`: the bytes are kept as they arrived.
    pub(crate) fn from_header(value: Option<&HeaderValue>) -> Encoding {
        let Some(value) = value.and_then(|v| v.to_str().ok()) else {
            return Encoding::Identity;
        };
        let value = value.trim();
        if value.eq_ignore_ascii_case("gzip") || value.eq_ignore_ascii_case("x-gzip") {
            Encoding::Gzip
        } else if value.eq_ignore_ascii_case("deflate") {
            Encoding::Deflate
        } else {
            Encoding::Identity
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Encoding::Identity => "identity",
            Encoding::Gzip => "gzip",
            Encoding::Deflate => "deflate",
        }
    }
}

/// Whether the sink can take more bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fill {
    More,
    /// More bytes arrived than the cap allows: stop reading, the body is truncated.
    Full,
}

/// A body that could not be decoded (corrupt or incomplete compressed stream).
#[derive(Debug)]
pub(crate) struct DecodeError {
    pub(crate) encoding: Encoding,
    pub(crate) source: io::Error,
}

/// Collects a body up to `cap` decoded bytes.
pub(crate) struct BodySink {
    state: State,
}

enum State {
    /// No decoding. A body that arrives in one frame is kept without copying.
    Identity {
        single: Option<Bytes>,
        buf: BytesMut,
        cap: usize,
        hint: usize,
        truncated: bool,
    },
    /// A compressed body before its first byte: the decoder is built only for a non-empty body
    /// (a HEAD or 204 answer may carry `Content-Encoding` with no bytes), and for `deflate` the
    /// first byte tells zlib from raw deflate.
    Pending {
        encoding: Encoding,
        cap: usize,
        hint: usize,
    },
    Gzip(GzDecoder<Capped>),
    Zlib(ZlibDecoder<Capped>),
    RawDeflate(DeflateDecoder<Capped>),
}

/// Most bytes reserved up front from a `Content-Length`: the server says it, so it is only a
/// hint; past this the buffer grows as bytes actually arrive.
const MAX_PREALLOCATION: usize = 256 * 1024;

impl BodySink {
    /// `size_hint` (Content-Length, if known) only pre-sizes the buffer, never beyond `cap` nor
    /// [`MAX_PREALLOCATION`].
    pub(crate) fn new(encoding: Encoding, cap: u64, size_hint: Option<u64>) -> BodySink {
        let cap = usize::try_from(cap).unwrap_or(usize::MAX);
        let hint = size_hint
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(0)
            .min(cap)
            .min(MAX_PREALLOCATION);
        let state = match encoding {
            Encoding::Identity => State::Identity {
                single: None,
                buf: BytesMut::new(),
                cap,
                hint,
                truncated: false,
            },
            Encoding::Gzip | Encoding::Deflate => State::Pending {
                encoding,
                cap,
                hint,
            },
        };
        BodySink { state }
    }

    /// Takes one data frame.
    pub(crate) fn push(&mut self, data: Bytes) -> Result<Fill, DecodeError> {
        if data.is_empty() {
            return Ok(Fill::More);
        }
        match &mut self.state {
            State::Identity {
                single,
                buf,
                cap,
                hint,
                truncated,
            } => {
                let held = single.as_ref().map_or(buf.len(), Bytes::len);
                let room = *cap - held;
                if single.is_none() && buf.is_empty() && data.len() <= room {
                    *single = Some(data);
                    return Ok(Fill::More);
                }
                if let Some(first) = single.take() {
                    buf.reserve((*hint).max(first.len() + data.len().min(room)));
                    buf.extend_from_slice(&first);
                }
                let take = data.len().min(room);
                buf.extend_from_slice(&data[..take]);
                if take < data.len() {
                    *truncated = true;
                    return Ok(Fill::Full);
                }
                Ok(Fill::More)
            }
            State::Pending {
                encoding,
                cap,
                hint,
            } => {
                let sink = Capped::new(*cap, *hint);
                self.state = match encoding {
                    Encoding::Gzip => State::Gzip(GzDecoder::new(sink)),
                    _ if looks_like_zlib(data[0]) => State::Zlib(ZlibDecoder::new(sink)),
                    _ => State::RawDeflate(DeflateDecoder::new(sink)),
                };
                self.push(data)
            }
            State::Gzip(d) => feed(d, &data, Encoding::Gzip),
            State::Zlib(d) => feed(d, &data, Encoding::Deflate),
            State::RawDeflate(d) => feed(d, &data, Encoding::Deflate),
        }
    }

    /// Ends the body: flushes the decoder and returns the bytes kept and whether the body was
    /// cut at the cap.
    pub(crate) fn finish(mut self) -> Result<(Bytes, bool), DecodeError> {
        match &mut self.state {
            State::Identity {
                single,
                buf,
                truncated,
                ..
            } => {
                let bytes = match single.take() {
                    Some(b) => b,
                    None => std::mem::take(buf).freeze(),
                };
                Ok((bytes, *truncated))
            }
            State::Pending { .. } => Ok((Bytes::new(), false)),
            State::Gzip(d) => finish_decoder(d.try_finish(), d.get_mut(), Encoding::Gzip),
            State::Zlib(d) => finish_decoder(d.try_finish(), d.get_mut(), Encoding::Deflate),
            State::RawDeflate(d) => finish_decoder(d.try_finish(), d.get_mut(), Encoding::Deflate),
        }
    }

    /// Returns what was kept after the cap was hit (the decoder is not finished: the rest of
    /// the stream never arrives).
    pub(crate) fn into_truncated(mut self) -> Bytes {
        match &mut self.state {
            State::Identity { single, buf, .. } => match single.take() {
                Some(b) => b,
                None => std::mem::take(buf).freeze(),
            },
            State::Pending { .. } => Bytes::new(),
            State::Gzip(d) => d.get_mut().take(),
            State::Zlib(d) => d.get_mut().take(),
            State::RawDeflate(d) => d.get_mut().take(),
        }
    }
}

/// A zlib stream starts with CMF: compression method 8 in the low nibble, window ≤ 32 KiB.
fn looks_like_zlib(first: u8) -> bool {
    first & 0x0f == 8 && first >> 4 <= 7
}

fn feed<W: DecoderSink>(
    decoder: &mut W,
    mut data: &[u8],
    encoding: Encoding,
) -> Result<Fill, DecodeError> {
    while !data.is_empty() {
        match decoder.write(data) {
            // The compressed stream has ended; trailing bytes are ignored.
            Ok(0) => break,
            Ok(n) => data = &data[n..],
            Err(_) if decoder.capped().overflowed => return Ok(Fill::Full),
            Err(source) => return Err(DecodeError { encoding, source }),
        }
    }
    Ok(Fill::More)
}

fn finish_decoder(
    finished: io::Result<()>,
    sink: &mut Capped,
    encoding: Encoding,
) -> Result<(Bytes, bool), DecodeError> {
    match finished {
        Ok(()) => Ok((sink.take(), false)),
        Err(_) if sink.overflowed => Ok((sink.take(), true)),
        Err(source) => Err(DecodeError { encoding, source }),
    }
}

/// Access to the capped writer inside each decoder type.
trait DecoderSink: Write {
    fn capped(&self) -> &Capped;
}

impl DecoderSink for GzDecoder<Capped> {
    fn capped(&self) -> &Capped {
        self.get_ref()
    }
}

impl DecoderSink for ZlibDecoder<Capped> {
    fn capped(&self) -> &Capped {
        self.get_ref()
    }
}

impl DecoderSink for DeflateDecoder<Capped> {
    fn capped(&self) -> &Capped {
        self.get_ref()
    }
}

/// The writer a decoder writes into: keeps the first `cap` bytes and fails the write that
/// would exceed them, which stops the decoder at once (no decompressing into the void).
pub(crate) struct Capped {
    buf: BytesMut,
    cap: usize,
    /// Set when a write came in with the buffer full: the body is longer than the cap.
    overflowed: bool,
    /// Set once the bytes were taken; the decoder's drop must not write again.
    taken: bool,
}

impl Capped {
    fn new(cap: usize, hint: usize) -> Capped {
        Capped {
            buf: BytesMut::with_capacity(hint),
            cap,
            overflowed: false,
            taken: false,
        }
    }

    fn take(&mut self) -> Bytes {
        self.taken = true;
        std::mem::take(&mut self.buf).freeze()
    }
}

impl Write for Capped {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if data.is_empty() {
            return Ok(0);
        }
        if self.taken {
            return Err(io::Error::other("body already taken"));
        }
        let room = self.cap - self.buf.len();
        if room == 0 {
            self.overflowed = true;
            return Err(io::Error::other("body cap reached"));
        }
        let n = room.min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::{DeflateEncoder, GzEncoder, ZlibEncoder};
    use flate2::Compression;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn zlib(data: &[u8]) -> Vec<u8> {
        let mut e = ZlibEncoder::new(Vec::new(), Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn raw_deflate(data: &[u8]) -> Vec<u8> {
        let mut e = DeflateEncoder::new(Vec::new(), Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    /// Feeds `wire` in `chunk`-sized frames; returns (body, truncated) or the decode error.
    fn collect(
        encoding: Encoding,
        cap: u64,
        wire: &[u8],
        chunk: usize,
    ) -> Result<(Bytes, bool), String> {
        let mut sink = BodySink::new(encoding, cap, None);
        for part in wire.chunks(chunk) {
            match sink.push(Bytes::copy_from_slice(part)) {
                Ok(Fill::More) => {}
                Ok(Fill::Full) => return Ok((sink.into_truncated(), true)),
                Err(e) => return Err(e.source.to_string()),
            }
        }
        sink.finish().map_err(|e| e.source.to_string())
    }

    #[test]
    fn encodings_from_header() {
        let cases: &[(Option<&str>, Encoding)] = &[
            (None, Encoding::Identity),
            (Some("gzip"), Encoding::Gzip),
            (Some("GZIP"), Encoding::Gzip),
            (Some("x-gzip"), Encoding::Gzip),
            (Some(" deflate "), Encoding::Deflate),
            (Some("br"), Encoding::Identity),
            (Some("gzip, br"), Encoding::Identity),
            (Some("identity"), Encoding::Identity),
        ];
        for (value, want) in cases {
            let header = value.map(HeaderValue::from_static);
            assert_eq!(Encoding::from_header(header.as_ref()), *want, "{value:?}");
        }
    }

    #[test]
    fn collects_and_caps() {
        let text: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        // (encoding, wire bytes, cap, frame size, expected length, expected truncated)
        #[rustfmt::skip]
        let cases: Vec<(Encoding, Vec<u8>, u64, usize, usize, bool)> = vec![
            (Encoding::Identity, text.clone(), 20_000, 10_000, 10_000, false),
            (Encoding::Identity, text.clone(), 20_000, 777, 10_000, false),
            (Encoding::Identity, text.clone(), 10_000, 777, 10_000, false),
            (Encoding::Identity, text.clone(), 9_999, 777, 9_999, true),
            (Encoding::Identity, text.clone(), 100, 10_000, 100, true),
            (Encoding::Gzip, gzip(&text), 20_000, 100, 10_000, false),
            (Encoding::Gzip, gzip(&text), 10_000, 7, 10_000, false),
            (Encoding::Gzip, gzip(&text), 1_000, 100, 1_000, true),
            (Encoding::Deflate, zlib(&text), 20_000, 64, 10_000, false),
            (Encoding::Deflate, zlib(&text), 500, 64, 500, true),
            (Encoding::Deflate, raw_deflate(&text), 20_000, 1, 10_000, false),
            (Encoding::Deflate, raw_deflate(&text), 10, 64, 10, true),
        ];
        for (i, (enc, wire, cap, chunk, len, truncated)) in cases.into_iter().enumerate() {
            let (body, cut) = collect(enc, cap, &wire, chunk).unwrap();
            assert_eq!(body.len(), len, "case {i}");
            assert_eq!(cut, truncated, "case {i}");
            assert_eq!(&body[..], &text[..len], "case {i}");
        }
    }

    #[test]
    fn gzip_bomb_stops_at_cap() {
        // 64 MiB of zeros compresses to ~64 KiB; one frame of it must not decode it all.
        let mut e = GzEncoder::new(Vec::new(), Compression::best());
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..64 {
            e.write_all(&zeros).unwrap();
        }
        let wire = e.finish().unwrap();
        let (body, cut) = collect(Encoding::Gzip, 4096, &wire, wire.len()).unwrap();
        assert_eq!(body.len(), 4096);
        assert!(cut);
    }

    #[test]
    fn corrupt_and_incomplete_streams_fail() {
        let text = b"hello hello hello hello";
        let wire = gzip(text);
        assert!(collect(Encoding::Gzip, 1000, &wire[..wire.len() - 4], 5).is_err());
        assert!(collect(Encoding::Gzip, 1000, b"this is not gzip at all", 5).is_err());
    }

    #[test]
    fn empty_body() {
        // A HEAD or 204 answer can say `Content-Encoding: gzip` and carry no bytes.
        for enc in [Encoding::Identity, Encoding::Gzip, Encoding::Deflate] {
            let sink = BodySink::new(enc, 10, Some(0));
            assert_eq!(sink.finish().unwrap(), (Bytes::new(), false), "{enc:?}");
        }
    }
}
