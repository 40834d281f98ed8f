//! Tokens, digests and IDs (docs/format.md "Tokens, digests and IDs").
//!
//! A minted token is `tf_` + 43 base64url characters (256 bits from the OS CSPRNG) + a
//! 6-character checksum (base64url of the first 4 bytes of SHA-256 over everything before
//! it). The checksum lets `check`/`id` tell a mistyped or truncated token apart from a
//! foreign one without any file; such a token is still simply unknown.
//!
//! Also here: [`Secret`], a token in memory (redacted `Debug`, wiped on drop, compared in
//! constant time), and [`redact`], the one function that finds tokens in text on its way to
//! stderr, stdout, the audit log or a log line.

use std::fmt;
use std::io::BufRead;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// What every minted token starts with, so that redaction and [`shape`] can spot one.
pub const PREFIX: &str = "tf_";
const RANDOM_CHARS: usize = 43; // 32 bytes, base64url without padding
const CHECKSUM_CHARS: usize = 6; // 4 bytes
/// The length of a minted token in bytes: prefix, random part and checksum.
pub const MINTED_LEN: usize = PREFIX.len() + RANDOM_CHARS + CHECKSUM_CHARS;

/// The longest token accepted from stdin or the environment; far above any real bearer
/// token, low enough that a runaway pipe cannot exhaust memory.
pub const MAX_TOKEN_LEN: usize = 4096;

/// A secret bearer token. Its `Debug` is redacted, its bytes (the whole buffer) are wiped on
/// drop, and two are compared in constant time.
#[derive(Clone)]
pub struct Secret(Zeroizing<Vec<u8>>);

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        // How many leading bytes of a guess are right must not show in the time taken.
        self.0.as_slice().ct_eq(other.0.as_slice()).into()
    }
}

impl Eq for Secret {}

impl Secret {
    /// Takes over `bytes`, which are wiped when the secret is dropped.
    pub fn new(bytes: Vec<u8>) -> Self {
        Secret(Zeroizing::new(bytes))
    }

    /// The token itself, to hash, compare or print on stdout; never for a log or message.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// No token was presented: empty input, or a line longer than [`MAX_TOKEN_LEN`], which
    /// [`Secret::read_first_line`] drops.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// What the file stores for a hashed record, and what a lookup compares.
    pub fn digest(&self) -> Digest {
        Digest::of(&self.0)
    }

    /// Reads the token from the first line of `input`, without its line ending. Stops at
    /// the first newline: whoever feeds the line (a terminal, a script) need not close it.
    pub fn read_first_line(input: impl BufRead) -> std::io::Result<Secret> {
        // One byte past the limit tells "too long" apart from "exactly at the limit". All
        // of it allocated at once: a buffer that grew would leave copies nobody wipes.
        let limit = MAX_TOKEN_LEN + 2;
        let mut bytes = Zeroizing::new(Vec::with_capacity(limit));
        input.take(limit as u64).read_until(b'\n', &mut bytes)?;
        if let Some(end) = bytes.iter().position(|&b| b == b'\n') {
            bytes.truncate(end);
        }
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
        if bytes.len() > MAX_TOKEN_LEN {
            bytes.clear();
        }
        Ok(Secret(bytes))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// The SHA-256 of a token.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// Hashes a token or plaintext credential, or any bytes to tell contents apart.
    pub fn of(bytes: &[u8]) -> Self {
        Digest(Sha256::digest(bytes).into())
    }

    /// 64 lowercase hex digits, the form stored after `sha256:`.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    /// Parses 64 lowercase hex digits (the stored `sha256:` form requires lowercase).
    pub fn from_hex(text: &[u8]) -> Option<Self> {
        if text.len() != 64 {
            return None;
        }
        // Eight digits at a time and one check at the end: loading a million `sha256:`
        // records decodes 64 million digits.
        let mut out = [0u8; 32];
        let mut valid = true;
        for (digits, bytes) in text.chunks_exact(8).zip(out.chunks_exact_mut(4)) {
            let mut word = [0u8; 8];
            word.copy_from_slice(digits);
            let (value, ok) = hex_word(u64::from_le_bytes(word));
            valid &= ok;
            bytes.copy_from_slice(&value.to_le_bytes());
        }
        valid.then_some(Digest(out))
    }

    /// The record ID for this digest: its first 12 hex digits.
    pub fn id(&self) -> Id {
        let mut id = [0u8; ID_LEN];
        for (pair, &b) in id.chunks_exact_mut(2).zip(&self.0) {
            pair[0] = HEX_DIGITS[usize::from(b >> 4)];
            pair[1] = HEX_DIGITS[usize::from(b & 15)];
        }
        Id(id)
    }
}

impl fmt::Debug for Digest {
    // A digest is not a secret by itself, but it lets anyone verify a guessed token and
    // must not go to logs; show only the ID.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest(id={})", self.id())
    }
}

const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Eight lowercase hex digits, loaded little-endian, to their four bytes (SWAR: every byte
/// lane at once), and whether all eight were lowercase hex digits.
fn hex_word(x: u64) -> (u32, bool) {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = ONES * 0x80;
    // For bytes below 0x80 the sums never carry into the next lane: bit 7 of
    // b + (0x80 - lo) is set iff b >= lo, and bit 7 of b + (0x7F - hi) iff b > hi.
    let at_least = |lo: u8| x.wrapping_add(ONES * u64::from(0x80 - lo)) & HIGH;
    let above = |hi: u8| x.wrapping_add(ONES * u64::from(0x7F - hi)) & HIGH;
    let digit = at_least(b'0') & !above(b'9');
    let letter = at_least(b'a') & !above(b'f');
    let ok = x & HIGH == 0 && digit | letter == HIGH;
    // '0'..='9' are worth their low nibble, 'a'..='f' their low nibble + 9.
    let values = (x & (ONES * 0x0F)) + (letter >> 7) * 9;
    // Lane 2k holds the high nibble of output byte k, lane 2k+1 the low one.
    let pairs = ((values << 4) | (values >> 8)) & 0x00FF_00FF_00FF_00FF;
    let packed = (pairs | (pairs >> 8)) & 0x0000_FFFF_0000_FFFF;
    ((packed | (packed >> 16)) as u32, ok)
}

fn lower_hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

/// Two lowercase hex digits per byte.
fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(HEX_DIGITS[usize::from(b >> 4)] as char);
        out.push(HEX_DIGITS[usize::from(b & 15)] as char);
    }
    out
}

/// Hex digits in a record ID: 48 bits of the digest.
pub const ID_LEN: usize = 12;
/// The shortest ID prefix accepted as an argument, in hex digits.
pub const MIN_ID_PREFIX: usize = 4;

/// A record's public identifier: the first 12 hex digits of its token's SHA-256.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Id([u8; ID_LEN]);

impl Id {
    /// The 12 hex digits, as `list`, messages and the audit log show them.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0)
            .expect("an Id is built only by Digest::id, from ASCII hex digits")
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Id({})", self.as_str())
    }
}

/// A user-given ID or ID prefix: at least 4 hex digits (case-insensitive on input).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdPrefix(String);

impl IdPrefix {
    /// Accepts 4 to 12 hex digits in either case, ignoring surrounding whitespace. The error
    /// quotes `text` only when it is too short to be a token and holds no `tf_`.
    pub fn parse(text: &str) -> Result<Self, TokenError> {
        let lower = text.trim().to_ascii_lowercase();
        if lower.len() < MIN_ID_PREFIX
            || lower.len() > ID_LEN
            || !lower.bytes().all(|b| lower_hex_value(b).is_some())
        {
            // A mistyped ID is worth showing; something longer may be a (legacy, shapeless)
            // token pasted in the wrong place, and is not echoed — nor the start of a minted
            // one, however short.
            // Only an ID-shaped mistake is shown — a few hex digits too many or too few, a
            // typo or two (`9f6g`): anything else may be a short legacy token, which has no
            // shape (random letters and digits are hex about one time in three).
            let text_trimmed = text.trim();
            let hex = text_trimmed.bytes().filter(u8::is_ascii_hexdigit).count();
            let id_shaped = text_trimmed.len() <= ID_LEN + 2
                && text_trimmed.bytes().all(|b| b.is_ascii_alphanumeric())
                && hex * 4 >= text_trimmed.len() * 3;
            let shown = match id_shaped {
                true => format!("{text:?}"),
                false => format!("the argument ({} characters)", text.chars().count()),
            };
            return Err(TokenError::NotAnId { shown });
        }
        Ok(IdPrefix(lower))
    }

    /// Whether `id` starts with this prefix.
    pub fn matches(&self, id: &Id) -> bool {
        id.as_str().starts_with(&self.0)
    }

    /// The prefix in lower case, as matched against IDs.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Why an ID, a value meant for a record, or the making of a token was refused.
#[derive(Debug)]
pub enum TokenError {
    /// An ID argument is not 4 to 12 hex digits.
    NotAnId {
        /// The argument as the message may show it: quoted, or only its length when it
        /// could be a token.
        shown: String,
    },
    /// A name or scope holds what looks like a token.
    TokenInValue {
        /// The flag that carried it (`--name`, `--scope`).
        flag: &'static str,
    },
    /// The OS CSPRNG failed.
    NoRandomness(getrandom::Error),
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenError::NotAnId { shown } => write!(
                f,
                "{shown} is not a record ID: give {MIN_ID_PREFIX} to {ID_LEN} hex digits \
                 as shown by `tokenfile list`"
            ),
            TokenError::TokenInValue { flag } => write!(
                f,
                "{flag}: the value holds what looks like a tokenfile token; a token never goes on the \
                 command line (it would show in `ps` and in your shell history) nor into a {}",
                flag.trim_start_matches('-')
            ),
            TokenError::NoRandomness(e) => write!(f, "cannot get randomness from the OS: {e}"),
        }
    }
}

impl std::error::Error for TokenError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TokenError::NoRandomness(e) => Some(e),
            _ => None,
        }
    }
}

/// Mints a new token from 256 bits of the OS CSPRNG.
pub fn mint() -> Result<Secret, TokenError> {
    let mut random = Zeroizing::new([0u8; 32]);
    getrandom::fill(random.as_mut_slice()).map_err(TokenError::NoRandomness)?;
    let mut token = String::with_capacity(MINTED_LEN);
    token.push_str(PREFIX);
    URL_SAFE_NO_PAD.encode_string(random.as_slice(), &mut token);
    let checksum = checksum(token.as_bytes());
    token.push_str(&checksum);
    Ok(Secret::new(token.into_bytes()))
}

fn checksum(body: &[u8]) -> String {
    let sum = Sha256::digest(body);
    URL_SAFE_NO_PAD.encode(&sum[..4])
}

/// What a presented token looks like, for a helpful hint; never a grant by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// A well-formed minted token.
    Minted,
    /// Starts like a minted token but its length or checksum is wrong: mistyped or truncated.
    DamagedMinted,
    /// Anything else (a legacy or hand-made token).
    Foreign,
}

/// Tells a minted token from a damaged or foreign one by prefix, length and checksum alone.
pub fn shape(token: &[u8]) -> Shape {
    if !token.starts_with(PREFIX.as_bytes()) {
        return Shape::Foreign;
    }
    if token.len() != MINTED_LEN {
        return Shape::DamagedMinted;
    }
    let (body, sum) = token.split_at(MINTED_LEN - CHECKSUM_CHARS);
    if checksum(body).as_bytes() == sum {
        Shape::Minted
    } else {
        Shape::DamagedMinted
    }
}

/// Refuses a value for a record (a name, a scope) that holds something shaped like a
/// tokenfile token, whole or cut: it would be stored in the file and the audit log, and
/// it came through the command line, where `ps` and shell history show it.
pub fn refuse_token_in(flag: &'static str, value: &str) -> Result<(), TokenError> {
    if redact(value) == value {
        return Ok(());
    }
    Err(TokenError::TokenInValue { flag })
}

/// What stands in for a token in a message.
pub const REDACTED: &str = "[token redacted]";

/// The shortest run after `tf_` that [`redact`] takes for a (possibly cut) token. Below it a
/// `tf_` word is taken for a name (`tf_deployBot`): the start of a token that short leaks at
/// most 66 of its 256 random bits, and a lower bound would refuse ordinary names.
const REDACT_FROM: usize = 12;

/// The shortest run without a prefix that [`redact`] takes for a secret when no checksum
/// can confirm it (a token cut from the front, or a shapeless one): [`SHAPELESS_FROM`]
/// characters of the token alphabet with upper case, lower case and digits. 32 random
/// base64url characters lack one of the three with a probability below 1%, and a run like
/// that in a name or scope is in practice always a pasted secret (an API key, a token),
/// while words, IDs (lower-case hex), dates and paths never are one. Shorter fragments are
/// left alone: one leaves at least 12 of the 43 random characters hidden (72 bits; a tail,
/// which holds the 6 checksum characters, at least 18), beyond any guessing, whereas
/// mixed-case words of 20-odd characters are real names.
const SHAPELESS_FROM: usize = 32;

/// A minted token without its prefix: the random part and the checksum.
const BARE_LEN: usize = RANDOM_CHARS + CHECKSUM_CHARS;

fn url_safe(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// Whether `bare` (exactly [`BARE_LEN`] bytes) is a minted token's random part and
/// checksum, `tf_` cut off: the checksum is over the prefix and the random part.
fn is_bare_minted(bare: &[u8]) -> bool {
    let (random, sum) = bare.split_at(RANDOM_CHARS);
    let digest = Sha256::new()
        .chain_update(PREFIX)
        .chain_update(random)
        .finalize();
    // On the stack: this runs at every offset of a long run.
    let mut encoded = [0u8; 8];
    URL_SAFE_NO_PAD
        .encode_slice(&digest[..4], &mut encoded)
        .is_ok_and(|n| &encoded[..n] == sum)
}

/// Whether a run of the token alphabet looks like random base64url ([`SHAPELESS_FROM`]).
fn looks_random(run: &[u8]) -> bool {
    run.len() >= SHAPELESS_FROM
        && run.iter().any(u8::is_ascii_uppercase)
        && run.iter().any(u8::is_ascii_lowercase)
        && run.iter().any(u8::is_ascii_digit)
}

/// Whether the `tf_` at `piece[start..]` starts a cut or mistyped minted token that runs to
/// the end of the piece: it is a minted token's length, or at least [`REDACT_FROM`]
/// characters of both cases follow the prefix.
fn cut_minted_at(piece: &[u8], start: usize) -> bool {
    let run = &piece[start + PREFIX.len()..];
    let mixed_case =
        run.iter().any(u8::is_ascii_uppercase) && run.iter().any(u8::is_ascii_lowercase);
    piece.len() - start == MINTED_LEN || (run.len() >= REDACT_FROM && mixed_case)
}

/// Byte ranges of `bytes` to replace, in order and apart.
///
/// Tokens are made of URL-safe characters only, so each maximal run of them is searched
/// alone. First for what a checksum confirms, replaced exactly so that `${T}-prod` keeps
/// its `-prod`: a whole minted token, and its random part and checksum without the prefix
/// (`${T#tf_}`, `${T#t}`), at any offset in the run. What is left of the run between those
/// (a piece) is replaced whole when it [`looks_random`], or from a `tf_` on that starts a
/// cut or mistyped token ([`cut_minted_at`]).
fn secret_ranges(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut ranges = Vec::new();
    let piece = |from: usize, to: usize, ranges: &mut Vec<(usize, usize)>| {
        let text = &bytes[from..to];
        if looks_random(text) {
            ranges.push((from, to));
        } else if let Some(start) = (0..text.len())
            .find(|&i| text[i..].starts_with(PREFIX.as_bytes()) && cut_minted_at(text, i))
        {
            ranges.push((from + start, to));
        }
    };
    let mut at = 0;
    while at < bytes.len() {
        if !url_safe(bytes[at]) {
            at += 1;
            continue;
        }
        let end = at + bytes[at..].iter().take_while(|&&b| url_safe(b)).count();
        let (mut from, mut i) = (at, at);
        // Under BARE_LEN characters left, no checksum can be whole: nothing to hash.
        while i + BARE_LEN <= end {
            let whole = bytes[i..end].starts_with(PREFIX.as_bytes())
                && i + MINTED_LEN <= end
                && shape(&bytes[i..i + MINTED_LEN]) == Shape::Minted;
            let len = match whole {
                true => MINTED_LEN,
                false if is_bare_minted(&bytes[i..i + BARE_LEN]) => BARE_LEN,
                false => {
                    i += 1;
                    continue;
                }
            };
            piece(from, i, &mut ranges);
            ranges.push((i, i + len));
            i += len;
            from = i;
        }
        piece(from, end, &mut ranges);
        at = end;
    }
    ranges
}

/// Secrets of no recognizable shape that this process learned of — an argument that turned
/// out to be a credential of the file (a legacy token pasted as a `--scope`) — and that
/// [`redact`] replaces wherever they stand.
static KNOWN_SECRETS: std::sync::Mutex<Vec<Box<[u8]>>> = std::sync::Mutex::new(Vec::new());
/// Whether [`KNOWN_SECRETS`] holds any (the usual answer, no, without a lock).
static ANY_KNOWN_SECRET: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// From now on, [`redact`] treats `secret` as a token wherever it appears (whole).
pub fn also_secret(secret: &[u8]) {
    if secret.is_empty() {
        return;
    }
    let mut known = KNOWN_SECRETS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    known.push(secret.into());
    ANY_KNOWN_SECRET.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// Adds the places of the [`also_secret`] secrets in `bytes` to `ranges`, keeping them sorted
/// and disjoint.
fn add_known_secrets(bytes: &[u8], ranges: &mut Vec<(usize, usize)>) {
    if !ANY_KNOWN_SECRET.load(std::sync::atomic::Ordering::SeqCst) {
        return;
    }
    let known = KNOWN_SECRETS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let before = ranges.len();
    for secret in known.iter() {
        ranges.extend(
            memchr::memmem::find_iter(bytes, secret).map(|start| (start, start + secret.len())),
        );
    }
    if ranges.len() == before {
        return;
    }
    ranges.sort_unstable();
    let mut merged: Vec<(usize, usize)> = Vec::with_capacity(ranges.len());
    for &(start, end) in ranges.iter() {
        match merged.last_mut() {
            Some(last) if start <= last.1 => last.1 = last.1.max(end),
            _ => merged.push((start, end)),
        }
    }
    *ranges = merged;
}

/// `text` with every run that looks like a minted token or another secret replaced by
/// [`REDACTED`], wherever it stands: glued after any character (`ci-$T`, `x$T`, `a:$T`,
/// `/srv/$T`) or before one, with or without its `tf_` prefix. Taken for a token (see
/// `secret_ranges`):
/// - a minted token whose checksum holds, with or without `tf_` (only that much is
///   replaced);
/// - `tf_` and the URL-safe run after it, when it is exactly a minted token's length (a
///   whole token with a typo) or at least `REDACT_FROM` characters of both cases, as
///   random base64url almost always is (a token cut short; a name such as
///   `tf_deploy_bot` stays);
/// - a run of `SHAPELESS_FROM` or more URL-safe characters with upper and lower case and
///   digits (a token cut from the front, a pasted API key).
///
/// Every message for a person, every `--json` document and every audit line goes through
/// it, so a token pasted where a flag value or an ID belongs, or already in the file, is
/// never echoed; [`refuse_token_in`] uses it to keep one out of the file. What it cannot
/// know of by shape — a legacy or hand-made token — it knows once told with
/// [`also_secret`] (`check` looks its scope words up in the file before it names them; `mint`
/// checks a name and scopes against the file's credentials, plaintext and hashed). A piece of
/// such a token, cut short, stays unrecognizable.
pub fn redact(text: &str) -> std::borrow::Cow<'_, str> {
    let mut ranges = secret_ranges(text.as_bytes());
    add_known_secrets(text.as_bytes(), &mut ranges);
    if ranges.is_empty() {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    for (start, end) in ranges {
        // Ranges are runs of ASCII bounded by ASCII or by the text's ends, or whole
        // occurrences of a known secret (UTF-8 itself): char boundaries.
        out.push_str(&text[copied..start]);
        out.push_str(REDACTED);
        copied = end;
    }
    out.push_str(&text[copied..]);
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_in_messages_are_redacted() {
        let token = String::from_utf8(mint().unwrap().expose().to_vec()).unwrap();
        let cut = "tf_Xk3vQ9pLm2Rt7WzA"; // a token cut short (fixed: the test must not be random)
        let text = format!("unexpected argument '{token}' found; lacks scope {cut},x");
        let redacted = redact(&text);
        assert_eq!(
            redacted,
            format!("unexpected argument '{REDACTED}' found; lacks scope {REDACTED},x")
        );
        // Not a token: too short, or no mix of cases (a name, not random base64url).
        let kept = [
            "name tf_old",
            "tf_deploy_production_bot",
            "my_tf_deploy_production_bot",
            "/srv/tf_ProdTokens",
            "tf_",
            "tf_tf_",
        ];
        for kept in kept {
            assert_eq!(redact(kept), kept);
        }
    }

    #[test]
    fn a_token_glued_to_anything_is_redacted_whole_or_cut() {
        let token = String::from_utf8(mint().unwrap().expose().to_vec()).unwrap();
        let cut = &token[..30];
        // A cut token is taken for one whatever precedes it: also after a letter, which
        // once kept `stf_0123456789abcDEF` (docs/exit-codes.md: "glued to other characters").
        assert_eq!(redact("stf_0123456789abcDEF"), format!("s{REDACTED}"));
        for glue in [
            "", "x", "7", "_", "-", "/", ":", ".", "ci-", "tf_", "tf_x", "é",
        ] {
            for secret in [token.as_str(), cut] {
                let text = format!("name {glue}{secret}");
                let shown = redact(&text);
                assert!(!shown.contains(secret), "{glue:?}: {shown}");
                assert!(!shown.contains(&secret[..16]), "{glue:?}: {shown}");
                assert!(shown.contains(REDACTED), "{glue:?}: {shown}");
                assert!(refuse_token_in("--name", &text).is_err(), "{glue:?}");
            }
            if glue.starts_with(PREFIX) {
                continue; // then the glue looks like the start of a cut token itself
            }
            // A whole token is replaced alone: what is glued after it stays.
            for after in ["", "-prod", "x", "_1", "abcDEF0123456789"] {
                let text = format!("{glue}{token}{after}");
                assert_eq!(redact(&text), format!("{glue}{REDACTED}{after}"), "{text}");
            }
        }
        // Two tokens, one inside the other's glue.
        let other = String::from_utf8(mint().unwrap().expose().to_vec()).unwrap();
        let both = format!("{token}{other}");
        assert_eq!(redact(&both), format!("{REDACTED}{REDACTED}"));
    }

    #[test]
    fn a_token_without_its_prefix_or_cut_from_the_front_is_redacted() {
        for _ in 0..20 {
            let token = String::from_utf8(mint().unwrap().expose().to_vec()).unwrap();
            // Confirmed by its checksum: replaced exactly, whatever its characters.
            for bare in [&token[3..], &token[2..], &token[1..]] {
                let start = &token[3..10];
                for glue in ["", "x", "deploy_", "a:", "/", "é"] {
                    for after in ["", "-prod", "_1"] {
                        let text = format!("name {glue}{bare}{after}");
                        let shown = redact(&text);
                        assert!(!shown.contains(start), "{text}: {shown}");
                        assert!(shown.ends_with(&format!("{REDACTED}{after}")), "{shown}");
                        assert!(refuse_token_in("--name", &text).is_err());
                    }
                }
            }
        }
        // No checksum to confirm a tail: 32 characters with upper, lower and digits are a
        // secret, whatever is glued to them.
        let tail = "Xk3vQ9pLm2Rt7WzAb8Nc4Yd1Ue6Vf0Gh";
        assert_eq!(tail.len(), SHAPELESS_FROM);
        assert_eq!(redact(&format!("ci {tail}")), format!("ci {REDACTED}"));
        assert_eq!(redact(&format!("/{tail}-x/")), format!("/{REDACTED}/"));
        let kept = [
            &tail[1..],                                 // too short
            "deploy-production-cluster-eu-west-1",      // no upper case
            "DeployProductionClusterEuWestOneBot",      // no digit
            "0123456789abcdef0123456789abcdef01234567", // hex: no upper case
            "ci deploy bot Xk3vQ9pLm2Rt7WzAb8Nc",
        ];
        for kept in kept {
            assert_eq!(redact(kept), kept);
        }
    }

    #[test]
    fn minted_tokens_are_url_safe_and_checksummed() {
        let a = mint().unwrap();
        let b = mint().unwrap();
        assert_ne!(a, b);
        let text = std::str::from_utf8(a.expose()).unwrap();
        assert!(text.starts_with("tf_"));
        assert_eq!(text.len(), MINTED_LEN);
        assert!(
            text.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        );
        assert_eq!(shape(a.expose()), Shape::Minted);
    }

    #[test]
    fn damaged_tokens_are_recognized() {
        let t = mint().unwrap();
        let bytes = t.expose();
        assert_eq!(shape(&bytes[..bytes.len() - 1]), Shape::DamagedMinted);
        let mut typo = bytes.to_vec();
        typo[10] = if typo[10] == b'A' { b'B' } else { b'A' };
        assert_eq!(shape(&typo), Shape::DamagedMinted);
        assert_eq!(shape(b"legacy-secret"), Shape::Foreign);
    }

    #[test]
    fn digest_hex_round_trip_and_id() {
        let d = Digest::of(b"abc");
        assert_eq!(
            d.to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(Digest::from_hex(d.to_hex().as_bytes()), Some(d));
        assert_eq!(Digest::from_hex(d.to_hex().to_uppercase().as_bytes()), None);
        assert_eq!(d.id().as_str(), "ba7816bf8f01");
    }

    #[test]
    fn debug_never_shows_secrets() {
        let t = mint().unwrap();
        let shown = format!("{t:?} {:?}", t.digest());
        assert!(!shown.contains(std::str::from_utf8(t.expose()).unwrap()));
        assert!(!shown.contains(&t.digest().to_hex()));
    }

    #[test]
    fn first_line_of_input() {
        let s = Secret::read_first_line(&b"tok\r\nsecond\n"[..]).unwrap();
        assert_eq!(s.expose(), b"tok");
        let s = Secret::read_first_line(&b"tok"[..]).unwrap();
        assert_eq!(s.expose(), b"tok");
        let s = Secret::read_first_line(&b""[..]).unwrap();
        assert!(s.is_empty());
        let long = vec![b'a'; MAX_TOKEN_LEN + 10];
        assert!(Secret::read_first_line(&long[..]).unwrap().is_empty());
    }

    #[test]
    fn from_hex_accepts_exactly_lowercase_hex() {
        let good = Digest::of(b"abc").to_hex().into_bytes();
        let reference = |text: &[u8]| -> Option<Digest> {
            let mut out = [0u8; 32];
            for (i, pair) in text.chunks_exact(2).enumerate() {
                out[i] = (lower_hex_value(pair[0])? << 4) | lower_hex_value(pair[1])?;
            }
            Some(Digest(out))
        };
        assert_eq!(Digest::from_hex(&good), reference(&good));
        assert_eq!(
            Digest::from_hex(b"0123456789abcdef".repeat(4).as_slice()).map(|d| d.to_hex()),
            Some("0123456789abcdef".repeat(4))
        );
        // Every byte value at every position.
        for position in 0..64 {
            for byte in 0..=255u8 {
                let mut text = good.clone();
                text[position] = byte;
                assert_eq!(
                    Digest::from_hex(&text),
                    reference(&text),
                    "{position} {byte}"
                );
            }
        }
        assert_eq!(Digest::from_hex(&good[..63]), None);
    }

    #[test]
    fn id_prefix_rules() {
        assert!(IdPrefix::parse("abc").is_err());
        assert!(IdPrefix::parse("abcg").is_err());
        assert!(IdPrefix::parse("ba7816bf8f01ff").is_err());
        let p = IdPrefix::parse("BA78").unwrap();
        assert!(p.matches(&Digest::of(b"abc").id()));
    }
}
