//! `X-Hub-Signature-256`: any header is answered without a panic and accepted only when it carries the
//! body's HMAC under a configured, non-empty secret; a correct signature always verifies, a tampered one
//! never does.
//!
//! Input layout: one length byte and that many bytes of secret, one length byte and that many bytes of
//! header, then the body (lengths are cut to what is left).

use hmac::{Hmac, Mac};
use previewd_domain::Secret;
use previewd_github::{SignatureError, verify_signature};
use sha2::Sha256;

/// GitHub's header prefix before the hex digest.
const PREFIX: &str = "sha256=";
/// Hex digits in a SHA-256 HMAC.
const DIGEST_HEX: usize = 64;

/// `verify_signature` with the secret, header and body the input holds, and with headers made from them.
pub fn signature(data: &[u8]) {
    let (secret, rest) = take(data);
    let (header, body) = take(rest);
    let secret = String::from_utf8_lossy(secret).into_owned();
    let header = String::from_utf8_lossy(header).into_owned();
    let secrets = [Secret::new(secret.clone())];
    let expected = hmac_of(&secret, body);
    let signed = format!("{PREFIX}{}", hex::encode(&expected));

    // Whatever the header holds, it passes only with the body's HMAC in it.
    match verify_signature(&secrets, Some(&header), body) {
        Ok(()) => {
            assert!(!secret.is_empty(), "an empty secret verified {header:?}");
            let carried = header.strip_prefix(PREFIX).and_then(|h| hex::decode(h.trim()).ok());
            assert_eq!(carried.as_deref(), Some(&expected[..]), "{header:?} verified without the body's HMAC");
        }
        Err(error) => assert_eq!(error, SignatureError::Mismatch, "{header:?}"),
    }

    assert_eq!(verify_signature(&secrets, None, body), Err(SignatureError::Missing));
    assert_eq!(verify_signature(&[], Some(&signed), body), Err(SignatureError::Mismatch), "no secret configured");
    if secret.is_empty() {
        // An empty key would let anyone sign.
        assert_eq!(verify_signature(&secrets, Some(&signed), body), Err(SignatureError::Mismatch));
        return;
    }
    assert_eq!(verify_signature(&secrets, Some(&signed), body), Ok(()), "a correct signature is refused");
    // During a rotation the right secret may come second.
    let rotated = [Secret::new(format!("{secret}x")), Secret::new(secret.clone())];
    assert_eq!(verify_signature(&rotated, Some(&signed), body), Ok(()), "the second secret is not tried");

    // One hex digit changed, at a place the input chooses.
    let at = PREFIX.len() + data.len() % DIGEST_HEX;
    let mut tampered = signed.clone().into_bytes();
    tampered[at] = if tampered[at] == b'0' { b'1' } else { b'0' };
    let tampered = String::from_utf8(tampered).expect("hex is ASCII");
    assert_eq!(verify_signature(&secrets, Some(&tampered), body), Err(SignatureError::Mismatch), "{tampered}");
    // The signature of another body, or under another secret.
    let mut longer = body.to_vec();
    longer.push(b'\n');
    assert_eq!(verify_signature(&secrets, Some(&signed), &longer), Err(SignatureError::Mismatch), "another body");
    let other = [Secret::new(format!("{secret}x"))];
    assert_eq!(verify_signature(&other, Some(&signed), body), Err(SignatureError::Mismatch), "another secret");
}

/// Splits off a part as long as the first byte says (or what is left); an empty input gives two empty parts.
fn take(data: &[u8]) -> (&[u8], &[u8]) {
    let Some((&len, rest)) = data.split_first() else { return (data, data) };
    rest.split_at(usize::from(len).min(rest.len()))
}

/// The body's HMAC-SHA256 under `secret`, computed here independently of `verify_signature`.
fn hmac_of(secret: &str, body: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(body);
    mac.finalize().into_bytes().to_vec()
}
