//! Decryption of encrypted payloads (`encryptedFeatures`,
//! `encryptedSavedGroups`): AES-CBC with PKCS#7 padding, the payload given
//! as `"<ivBase64>.<cipherTextBase64>"` and the key as base64 (16, 24 or 32
//! bytes for AES-128/192/256).

use aes::cipher::{block_padding::Pkcs7, BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use std::fmt;

/// Why a payload could not be decrypted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecryptError {
    /// The payload has no `.` between IV and cipher text.
    MissingDelimiter,
    /// The key is not valid base64.
    InvalidKey,
    /// The key is not 16, 24 or 32 bytes long.
    InvalidKeyLength(usize),
    /// The IV is not valid base64.
    InvalidIv,
    /// The IV is not 16 bytes long.
    InvalidIvLength(usize),
    /// The cipher text is not valid base64 or not a whole number of blocks.
    InvalidCipherText,
    /// Padding check failed (usually a wrong key).
    BadPadding,
    /// The plain text is not UTF-8.
    InvalidUtf8,
}

impl fmt::Display for DecryptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecryptError::MissingDelimiter => f.write_str("encrypted payload has no '.' delimiter"),
            DecryptError::InvalidKey => f.write_str("decryption key is not valid base64"),
            DecryptError::InvalidKeyLength(n) => {
                write!(f, "decryption key must be 16, 24 or 32 bytes, got {n}")
            }
            DecryptError::InvalidIv => f.write_str("IV is not valid base64"),
            DecryptError::InvalidIvLength(n) => write!(f, "IV must be 16 bytes, got {n}"),
            DecryptError::InvalidCipherText => f.write_str("cipher text is not valid"),
            DecryptError::BadPadding => f.write_str("decryption failed (wrong key?)"),
            DecryptError::InvalidUtf8 => f.write_str("decrypted payload is not UTF-8"),
        }
    }
}

impl std::error::Error for DecryptError {}

/// Decrypts `"<ivBase64>.<cipherTextBase64>"` with a base64 key and returns
/// the plain text. Never panics on malformed input.
///
/// ```
/// let plain = flywheel_flags::decrypt(
///     "m5ylFM6ndyOJA2OPadubkw==.Uu7ViqgKEt/dWvCyhI46q088PkAEJbnXKf3KPZjf9IEQQ+A8fojNoxw4wIbPX3aj",
///     "Zvwv/+uhpFDznZ6SX28Yjg==",
/// ).unwrap();
/// assert_eq!(plain, r#"{"feature":{"defaultValue":true}}"#);
/// ```
pub fn decrypt(encrypted: &str, key_base64: &str) -> Result<String, DecryptError> {
    let (iv_b64, cipher_b64) = encrypted
        .split_once('.')
        .ok_or(DecryptError::MissingDelimiter)?;
    let key = STANDARD
        .decode(key_base64.trim())
        .map_err(|_| DecryptError::InvalidKey)?;
    let iv = STANDARD
        .decode(iv_b64)
        .map_err(|_| DecryptError::InvalidIv)?;
    if iv.len() != 16 {
        return Err(DecryptError::InvalidIvLength(iv.len()));
    }
    let mut buf = STANDARD
        .decode(cipher_b64)
        .map_err(|_| DecryptError::InvalidCipherText)?;
    if buf.is_empty() || buf.len() % 16 != 0 {
        return Err(DecryptError::InvalidCipherText);
    }
    let plain_len = match key.len() {
        16 => cbc::Decryptor::<aes::Aes128>::new_from_slices(&key, &iv)
            .map_err(|_| DecryptError::InvalidKeyLength(key.len()))?
            .decrypt_padded_mut::<Pkcs7>(&mut buf)
            .map_err(|_| DecryptError::BadPadding)?
            .len(),
        24 => cbc::Decryptor::<aes::Aes192>::new_from_slices(&key, &iv)
            .map_err(|_| DecryptError::InvalidKeyLength(key.len()))?
            .decrypt_padded_mut::<Pkcs7>(&mut buf)
            .map_err(|_| DecryptError::BadPadding)?
            .len(),
        32 => cbc::Decryptor::<aes::Aes256>::new_from_slices(&key, &iv)
            .map_err(|_| DecryptError::InvalidKeyLength(key.len()))?
            .decrypt_padded_mut::<Pkcs7>(&mut buf)
            .map_err(|_| DecryptError::BadPadding)?
            .len(),
        n => return Err(DecryptError::InvalidKeyLength(n)),
    };
    buf.truncate(plain_len);
    String::from_utf8(buf).map_err(|_| DecryptError::InvalidUtf8)
}

/// Encrypts `plain` for SDKs that [`decrypt`]: AES-CBC with PKCS#7 padding under a base64 key (16, 24 or 32
/// bytes) and the given IV (random per payload), as `"<ivBase64>.<cipherTextBase64>"`.
pub fn encrypt(plain: &str, key_base64: &str, iv: [u8; 16]) -> Result<String, DecryptError> {
    let key = STANDARD
        .decode(key_base64.trim())
        .map_err(|_| DecryptError::InvalidKey)?;
    let padded_len = (plain.len() / 16 + 1) * 16;
    let mut buf = vec![0u8; padded_len];
    buf[..plain.len()].copy_from_slice(plain.as_bytes());
    let n = plain.len();
    let bad_len = |_| DecryptError::InvalidKeyLength(key.len());
    let cipher_len = match key.len() {
        16 => cbc::Encryptor::<aes::Aes128>::new_from_slices(&key, &iv)
            .map_err(bad_len)?
            .encrypt_padded_mut::<Pkcs7>(&mut buf, n)
            .map_err(|_| DecryptError::BadPadding)?
            .len(),
        24 => cbc::Encryptor::<aes::Aes192>::new_from_slices(&key, &iv)
            .map_err(bad_len)?
            .encrypt_padded_mut::<Pkcs7>(&mut buf, n)
            .map_err(|_| DecryptError::BadPadding)?
            .len(),
        32 => cbc::Encryptor::<aes::Aes256>::new_from_slices(&key, &iv)
            .map_err(bad_len)?
            .encrypt_padded_mut::<Pkcs7>(&mut buf, n)
            .map_err(|_| DecryptError::BadPadding)?
            .len(),
        n => return Err(DecryptError::InvalidKeyLength(n)),
    };
    buf.truncate(cipher_len);
    Ok(format!("{}.{}", STANDARD.encode(iv), STANDARD.encode(&buf)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encrypt_round_trips_through_decrypt() {
        for key in [
            "Zvwv/+uhpFDznZ6SX28Yjg==",
            "AAECAwQFBgcICQoLDA0ODxAREhMUFRYX",
            "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
        ] {
            for plain in ["", "x", "exactly 16 bytes", r#"{"f":{"defaultValue":"é"}}"#] {
                let sealed = encrypt(plain, key, [7; 16]).unwrap();
                assert_eq!(decrypt(&sealed, key).unwrap(), plain);
            }
        }
        assert_eq!(
            encrypt("x", "AAAA", [0; 16]),
            Err(DecryptError::InvalidKeyLength(3))
        );
    }

    #[test]
    fn errors_not_panics() {
        assert_eq!(decrypt("abc", "x"), Err(DecryptError::MissingDelimiter));
        assert_eq!(
            decrypt("AAAA.AAAA", "Zvwv/+uhpFDznZ6SX28Yjg=="),
            Err(DecryptError::InvalidIvLength(3))
        );
        assert!(decrypt("m5ylFM6ndyOJA2OPadubkw==.", "Zvwv/+uhpFDznZ6SX28Yjg==").is_err());
    }
}
