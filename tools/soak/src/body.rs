//! Self-describing, self-checking bodies: every request, response and broadcast body starts with
//! a 64-byte head naming what it is, whose it is and how long it is, followed by a pattern that
//! is a pure function of (kind, id, offset). So any byte of any body can be checked where it
//! arrives, without storing what was sent, and a body that carries another request's bytes (or
//! is cut, padded or shuffled) is told apart from the right one.
//!
//! ```text
//!  offset size  request                 response                 broadcast
//!       0    4  "SQ01"                  "SR01"                   "SB01"
//!       4   16  soak id                 the request's soak id    soak id
//!      20   16  sender's client id      responder's client id    sender's client id
//!      36    4  total body length (head included), all three kinds
//!      40    1  behaviour code          0                        0
//!      41    1  1: soak id = wire id    0                        1: soak id = wire id
//!      44    4  response length         request length           0
//!      48    4  behaviour parameter ms  0                        0
//!      52    4  response chunk size     0                        0
//!      56    8  0                       FNV-1a 64 of the whole request body, as received
//! ```
//!
//! The response carries the hash of the exact request bytes the receiver got and the request's
//! length, so a sender that checks them knows its own request was delivered intact to the
//! receiver that answered, and that the answer is the one derived from it.

use std::fmt;

/// Length of the head.
pub const HEAD_LEN: usize = 64;

/// What a body is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    Request,
    Response,
    Broadcast,
}

impl Kind {
    fn magic(self) -> [u8; 4] {
        match self {
            Kind::Request => *b"SQ01",
            Kind::Response => *b"SR01",
            Kind::Broadcast => *b"SB01",
        }
    }

    fn from_magic(magic: &[u8]) -> Option<Kind> {
        [Kind::Request, Kind::Response, Kind::Broadcast]
            .into_iter()
            .find(|kind| kind.magic() == magic)
    }

    /// Mixed into the pattern seed, so a response is never byte-equal to its request's pattern.
    fn salt(self) -> u64 {
        match self {
            Kind::Request => 0x5157_0001,
            Kind::Response => 0x5352_0002,
            Kind::Broadcast => 0x5342_0003,
        }
    }
}

/// What the receiver of a request is told to do with it (chosen by the sender, so the sender
/// knows which outcome to expect).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Behavior {
    /// Answer after `delay_ms` (a modelled service time).
    Answer { delay_ms: u32 },
    /// Answer `extra_ms` after the request's timeout: the broker must have answered the sender
    /// with TIMEOUT and must drop the late response.
    Late { extra_ms: u32 },
    /// Never answer: the broker must time the request out and CANCEL it at the receiver.
    Never,
    /// Give up with CANCEL(RESPONSE): the sender must see the cancel.
    Cancel,
}

impl Behavior {
    fn encode(self) -> (u8, u32) {
        match self {
            Behavior::Answer { delay_ms } => (1, delay_ms),
            Behavior::Late { extra_ms } => (2, extra_ms),
            Behavior::Never => (3, 0),
            Behavior::Cancel => (4, 0),
        }
    }

    fn decode(code: u8, param: u32) -> Option<Behavior> {
        Some(match code {
            1 => Behavior::Answer { delay_ms: param },
            2 => Behavior::Late { extra_ms: param },
            3 => Behavior::Never,
            4 => Behavior::Cancel,
            _ => return None,
        })
    }

    /// The name used in counters.
    pub fn name(self) -> &'static str {
        match self {
            Behavior::Answer { .. } => "answer",
            Behavior::Late { .. } => "late",
            Behavior::Never => "never",
            Behavior::Cancel => "cancel",
        }
    }
}

/// A decoded head.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Head {
    pub kind: Kind,
    pub id: [u8; 16],
    pub author: [u8; 16],
    pub len: u32,
    /// Request: the behaviour asked of the receiver.
    pub behavior: Option<Behavior>,
    /// Request: the response length asked for. Response: the request's length.
    pub other_len: u32,
    /// Request: the response's frame size.
    pub chunk: u32,
    /// Response: the hash of the request body.
    pub hash: u64,
    /// Request, broadcast: the soak id is also the stream's wire id (a raw sender chose both);
    /// a library sender's stream has a wire id the library chose.
    pub wire_id_known: bool,
}

impl Head {
    pub fn request(
        id: [u8; 16],
        author: [u8; 16],
        len: u32,
        behavior: Behavior,
        wire_id_known: bool,
    ) -> Head {
        Head {
            kind: Kind::Request,
            id,
            author,
            len: len.max(HEAD_LEN as u32),
            behavior: Some(behavior),
            other_len: 0,
            chunk: 0,
            hash: 0,
            wire_id_known,
        }
    }

    pub fn broadcast(id: [u8; 16], author: [u8; 16], len: u32, wire_id_known: bool) -> Head {
        Head {
            kind: Kind::Broadcast,
            id,
            author,
            len: len.max(HEAD_LEN as u32),
            behavior: None,
            other_len: 0,
            chunk: 0,
            hash: 0,
            wire_id_known,
        }
    }

    /// The response a receiver derives from a request it received whole (`hash` of its bytes).
    pub fn response_to(request: &Head, responder: [u8; 16], hash: u64) -> Head {
        Head {
            kind: Kind::Response,
            id: request.id,
            author: responder,
            len: request.other_len.max(HEAD_LEN as u32),
            behavior: None,
            other_len: request.len,
            chunk: 0,
            hash,
            wire_id_known: true,
        }
    }

    fn encode(&self) -> [u8; HEAD_LEN] {
        let mut out = [0u8; HEAD_LEN];
        out[0..4].copy_from_slice(&self.kind.magic());
        out[4..20].copy_from_slice(&self.id);
        out[20..36].copy_from_slice(&self.author);
        out[36..40].copy_from_slice(&self.len.to_be_bytes());
        let (code, param) = self.behavior.map_or((0, 0), Behavior::encode);
        out[40] = code;
        out[41] = u8::from(self.kind != Kind::Response && self.wire_id_known);
        out[44..48].copy_from_slice(&self.other_len.to_be_bytes());
        out[48..52].copy_from_slice(&param.to_be_bytes());
        out[52..56].copy_from_slice(&self.chunk.to_be_bytes());
        out[56..64].copy_from_slice(&self.hash.to_be_bytes());
        out
    }

    fn decode(bytes: &[u8; HEAD_LEN]) -> Result<Head, BodyError> {
        let kind = Kind::from_magic(&bytes[0..4]).ok_or(BodyError::BadMagic)?;
        let u32_at = |at: usize| {
            u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        let mut id = [0u8; 16];
        id.copy_from_slice(&bytes[4..20]);
        let mut author = [0u8; 16];
        author.copy_from_slice(&bytes[20..36]);
        let len = u32_at(36);
        if (len as usize) < HEAD_LEN {
            return Err(BodyError::BadHead("length shorter than the head"));
        }
        let behavior = match kind {
            Kind::Request => Some(
                Behavior::decode(bytes[40], u32_at(48))
                    .ok_or(BodyError::BadHead("unknown behaviour"))?,
            ),
            _ => None,
        };
        let mut hash = [0u8; 8];
        hash.copy_from_slice(&bytes[56..64]);
        Ok(Head {
            kind,
            id,
            author,
            len,
            behavior,
            other_len: u32_at(44),
            chunk: u32_at(52),
            hash: u64::from_be_bytes(hash),
            wire_id_known: kind == Kind::Response || bytes[41] == 1,
        })
    }

    /// Sets the response frame size a request asks for.
    pub fn with_response(mut self, len: u32, chunk: u32) -> Head {
        self.other_len = len.max(HEAD_LEN as u32);
        self.chunk = chunk.max(1);
        self
    }

    fn seed(&self) -> u64 {
        let mut seed = self.kind.salt();
        for word in self.id.chunks_exact(8) {
            let mut w = [0u8; 8];
            w.copy_from_slice(word);
            seed = splitmix(seed ^ u64::from_le_bytes(w));
        }
        seed
    }

    /// The whole body.
    pub fn build(&self) -> Vec<u8> {
        let mut body = vec![0u8; self.len as usize];
        body[..HEAD_LEN].copy_from_slice(&self.encode());
        fill_pattern(self.seed(), HEAD_LEN, &mut body[HEAD_LEN..]);
        body
    }
}

/// A streaming body checker: bytes are fed in order as frames arrive; the head is decoded from
/// the first 64, every later byte is compared with the pattern its head implies, and the whole
/// is hashed (FNV-1a 64).
#[derive(Debug)]
pub struct Verifier {
    head_bytes: [u8; HEAD_LEN],
    got: usize,
    head: Option<Head>,
    seed: u64,
    hash: u64,
    error: Option<BodyError>,
    scratch: Vec<u8>,
}

impl Default for Verifier {
    fn default() -> Self {
        Verifier::new()
    }
}

impl Verifier {
    pub fn new() -> Verifier {
        Verifier {
            head_bytes: [0; HEAD_LEN],
            got: 0,
            head: None,
            seed: 0,
            hash: FNV_OFFSET,
            error: None,
            scratch: Vec::new(),
        }
    }

    /// The head, once its 64 bytes arrived and decoded.
    pub fn head(&self) -> Option<&Head> {
        self.head.as_ref()
    }

    pub fn feed(&mut self, mut data: &[u8]) {
        if self.error.is_some() {
            self.got += data.len();
            return;
        }
        self.hash = fnv(self.hash, data);
        if self.got < HEAD_LEN {
            let take = data.len().min(HEAD_LEN - self.got);
            self.head_bytes[self.got..self.got + take].copy_from_slice(&data[..take]);
            self.got += take;
            data = &data[take..];
            if self.got == HEAD_LEN {
                match Head::decode(&self.head_bytes) {
                    Ok(head) => {
                        self.seed = head.seed();
                        self.head = Some(head);
                    }
                    Err(e) => {
                        self.error = Some(e);
                        self.got += data.len();
                        return;
                    }
                }
            }
        }
        if data.is_empty() {
            return;
        }
        let Some(head) = self.head else {
            return;
        };
        if self.got + data.len() > head.len as usize {
            self.error = Some(BodyError::TooLong {
                expected: head.len as usize,
            });
            self.got += data.len();
            return;
        }
        self.scratch.resize(data.len(), 0);
        fill_pattern(self.seed, self.got, &mut self.scratch);
        if self.scratch != data {
            let at = self
                .scratch
                .iter()
                .zip(data)
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            self.error = Some(BodyError::Corrupt {
                offset: self.got + at,
            });
        }
        self.got += data.len();
    }

    /// The head and the hash of the whole body, once it is complete and intact.
    pub fn finish(&self) -> Result<(Head, u64), BodyError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let Some(head) = self.head else {
            return Err(BodyError::TooShort {
                got: self.got,
                expected: HEAD_LEN,
            });
        };
        if self.got != head.len as usize {
            return Err(BodyError::TooShort {
                got: self.got,
                expected: head.len as usize,
            });
        }
        Ok((head, self.hash))
    }
}

/// Checks a whole body at once.
pub fn verify(body: &[u8]) -> Result<(Head, u64), BodyError> {
    let mut verifier = Verifier::new();
    verifier.feed(body);
    verifier.finish()
}

/// FNV-1a 64 of a whole body (what a response's head must carry).
pub fn hash(body: &[u8]) -> u64 {
    fnv(FNV_OFFSET, body)
}

/// Why a body is not the body it claims to be.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum BodyError {
    BadMagic,
    BadHead(&'static str),
    TooShort { got: usize, expected: usize },
    TooLong { expected: usize },
    Corrupt { offset: usize },
}

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BodyError::BadMagic => write!(f, "not a soak body (bad magic)"),
            BodyError::BadHead(why) => write!(f, "bad head: {why}"),
            BodyError::TooShort { got, expected } => {
                write!(f, "body cut short: {got} of {expected} bytes")
            }
            BodyError::TooLong { expected } => write!(f, "body longer than its {expected} bytes"),
            BodyError::Corrupt { offset } => write!(f, "byte {offset} differs from the pattern"),
        }
    }
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv(mut hash: u64, data: &[u8]) -> u64 {
    for &byte in data {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    hash
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The pattern bytes at body offsets `offset .. offset + out.len()` (offsets ≥ [`HEAD_LEN`]):
/// byte `o` is byte `(o - 64) % 8` of `splitmix(seed + (o - 64) / 8)`.
fn fill_pattern(seed: u64, offset: usize, out: &mut [u8]) {
    let mut position = offset - HEAD_LEN;
    let mut i = 0;
    while i < out.len() {
        let word = splitmix(seed.wrapping_add((position / 8) as u64)).to_le_bytes();
        let within = position % 8;
        let take = (8 - within).min(out.len() - i);
        out[i..i + take].copy_from_slice(&word[within..within + take]);
        i += take;
        position += take;
    }
}

/// Proves at start-up that the checks can fail: an intact body passes; a flipped byte, a cut
/// body, and another request's body in place of this one's are each caught.
pub fn self_check() -> Result<(), String> {
    let head = Head::request([7; 16], [1; 16], 5000, Behavior::Never, true).with_response(100, 10);
    let body = head.build();
    let (got, hash_all) = verify(&body).map_err(|e| format!("intact body rejected: {e}"))?;
    if got != head || hash_all != hash(&body) {
        return Err("intact body misread".into());
    }
    let mut flipped = body.clone();
    flipped[4321] ^= 0x20;
    if verify(&flipped) != Err(BodyError::Corrupt { offset: 4321 }) {
        return Err("a flipped byte went unnoticed".into());
    }
    if verify(&body[..4999]).is_ok() {
        return Err("a cut body went unnoticed".into());
    }
    let other = Head::request([8; 16], [1; 16], 5000, Behavior::Never, true).build();
    let mut spliced = body[..HEAD_LEN].to_vec();
    spliced.extend_from_slice(&other[HEAD_LEN..]);
    if verify(&spliced).is_ok() {
        return Err("another request's bytes went unnoticed".into());
    }
    let mut streamed = Verifier::new();
    for piece in body.chunks(37) {
        streamed.feed(piece);
    }
    if streamed.finish() != Ok((head, hash_all)) {
        return Err("streamed check differs from the whole-body check".into());
    }
    Ok(())
}
