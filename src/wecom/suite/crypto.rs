//! WeCom's callback message crypto (its "WXBizMsgCrypt"): the signature over a
//! callback and the AES-256-CBC envelope of its message.
//!
//! - `msg_signature` = hex SHA-1 of the sorted, concatenated token, timestamp,
//!   nonce and ciphertext;
//! - key = Base64(EncodingAESKey + "="), 32 bytes; IV = its first 16 bytes;
//! - plaintext = 16 random bytes, the message's length (4 bytes, big-endian), the
//!   message, the receiver id; PKCS#7-padded to a multiple of **32** bytes.
//!
//! Written here because no maintained crate implements this envelope; the blocks
//! themselves are RustCrypto's `aes` + `cbc`, the digest is ring's.

use std::fmt;

use aes::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit, block_padding::NoPadding};
use base64::{
    Engine,
    alphabet::STANDARD,
    engine::{GeneralPurpose, GeneralPurposeConfig, general_purpose},
};
use ring::digest::{SHA1_FOR_LEGACY_USE_ONLY, digest};
use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;

type Decryptor = cbc::Decryptor<aes::Aes256>;
type Encryptor = cbc::Encryptor<aes::Aes256>;

/// WeCom pads to a multiple of 32 bytes, not of the AES block.
const PAD_TO: usize = 32;
/// The random prefix and the length field.
const HEADER: usize = 16 + 4;

/// Why a callback could not be opened. The numbers in the docs are those of
/// WeCom's own library, for operators comparing notes with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CryptError {
    /// The EncodingAESKey is not 43 characters of Base64 (−40004).
    #[error("the EncodingAESKey must be 43 characters of Base64")]
    InvalidAesKey,
    /// The signature does not match the message (−40001).
    #[error("the msg_signature does not match")]
    SignatureMismatch,
    /// The ciphertext is not Base64 (−40010).
    #[error("the ciphertext is not Base64")]
    NotBase64,
    /// The ciphertext does not decrypt to a well-formed envelope: wrong length,
    /// bad padding or a length field past its end (−40007, −40008).
    #[error("the ciphertext does not decrypt to a well-formed message")]
    Malformed,
}

/// One suite's callback token and EncodingAESKey.
pub struct MsgCrypt {
    token: SecretString,
    key: [u8; 32],
}

impl fmt::Debug for MsgCrypt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MsgCrypt(****)")
    }
}

/// A decrypted message and whom it was for.
#[derive(Clone, PartialEq, Eq)]
pub struct Opened {
    /// The message (XML for suite callbacks; the echo string for a URL check).
    pub message: Vec<u8>,
    /// The receiver id at its end: the suite id, a corp id…
    pub receive_id: String,
}

impl fmt::Debug for Opened {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The message may carry a suite ticket: only its length is shown.
        f.debug_struct("Opened")
            .field("message_bytes", &self.message.len())
            .field("receive_id", &self.receive_id)
            .finish()
    }
}

impl MsgCrypt {
    /// The crypto of a callback set up with `token` and `encoding_aes_key`.
    pub fn new(token: SecretString, encoding_aes_key: &str) -> Result<Self, CryptError> {
        if encoding_aes_key.len() != 43 {
            return Err(CryptError::InvalidAesKey);
        }
        // WeCom's keys are 43 characters whose last one carries two bits past the
        // 32 bytes; its own samples decode them leniently.
        let lenient = GeneralPurpose::new(
            &STANDARD,
            GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
        );
        let decoded = lenient
            .decode(format!("{encoding_aes_key}="))
            .map_err(|_| CryptError::InvalidAesKey)?;
        let key = <[u8; 32]>::try_from(decoded).map_err(|_| CryptError::InvalidAesKey)?;
        Ok(Self { token, key })
    }

    /// The `msg_signature` of a callback.
    pub fn signature(&self, timestamp: &str, nonce: &str, encrypted: &str) -> String {
        let mut parts = [self.token.expose_secret(), timestamp, nonce, encrypted];
        parts.sort_unstable();
        let hash = digest(&SHA1_FOR_LEGACY_USE_ONLY, parts.concat().as_bytes());
        hash.as_ref().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Checks `signature` (in constant time), then decrypts.
    pub fn open(
        &self,
        signature: &str,
        timestamp: &str,
        nonce: &str,
        encrypted: &str,
    ) -> Result<Opened, CryptError> {
        let expected = self.signature(timestamp, nonce, encrypted);
        let given = signature.to_ascii_lowercase();
        if !bool::from(expected.as_bytes().ct_eq(given.as_bytes())) {
            return Err(CryptError::SignatureMismatch);
        }
        self.decrypt(encrypted)
    }

    /// Decrypts a ciphertext (without checking any signature).
    pub fn decrypt(&self, encrypted: &str) -> Result<Opened, CryptError> {
        let mut bytes = general_purpose::STANDARD
            .decode(encrypted.trim())
            .map_err(|_| CryptError::NotBase64)?;
        if bytes.is_empty() || bytes.len() % PAD_TO != 0 {
            return Err(CryptError::Malformed);
        }
        let plain = Decryptor::new(&self.key.into(), self.iv().into())
            .decrypt_padded_mut::<NoPadding>(&mut bytes)
            .map_err(|_| CryptError::Malformed)?;
        let pad = usize::from(*plain.last().ok_or(CryptError::Malformed)?);
        if !(1..=PAD_TO).contains(&pad)
            || plain[plain.len() - pad..].iter().any(|&b| b != pad as u8)
        {
            return Err(CryptError::Malformed);
        }
        let unpadded = &plain[..plain.len() - pad];
        let body = unpadded.get(HEADER..).ok_or(CryptError::Malformed)?;
        let length =
            u32::from_be_bytes([unpadded[16], unpadded[17], unpadded[18], unpadded[19]]) as usize;
        if length > body.len() {
            return Err(CryptError::Malformed);
        }
        let (message, receive_id) = body.split_at(length);
        let receive_id =
            String::from_utf8(receive_id.to_vec()).map_err(|_| CryptError::Malformed)?;
        Ok(Opened {
            message: message.to_vec(),
            receive_id,
        })
    }

    /// Encrypts `message` for `receive_id`, with `random` as its 16-byte prefix:
    /// what WeCom sends (the sandbox plays WeCom with it).
    pub fn encrypt(&self, message: &[u8], receive_id: &str, random: [u8; 16]) -> String {
        let mut plain = Vec::with_capacity(HEADER + message.len() + receive_id.len() + PAD_TO);
        plain.extend_from_slice(&random);
        // A message longer than 4 GiB cannot be sent; its length would wrap.
        plain.extend_from_slice(
            &u32::try_from(message.len())
                .unwrap_or(u32::MAX)
                .to_be_bytes(),
        );
        plain.extend_from_slice(message);
        plain.extend_from_slice(receive_id.as_bytes());
        let pad = PAD_TO - plain.len() % PAD_TO;
        plain.resize(plain.len() + pad, pad as u8);
        let length = plain.len();
        let encrypted = Encryptor::new(&self.key.into(), self.iv().into())
            .encrypt_padded_mut::<NoPadding>(&mut plain, length)
            .map(<[u8]>::to_vec)
            // The buffer is padded to whole blocks just above.
            .unwrap_or_default();
        general_purpose::STANDARD.encode(encrypted)
    }

    fn iv(&self) -> &[u8; 16] {
        self.key.first_chunk().unwrap_or(&[0; 16])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// WeCom's official Go sample (`json_callback/sample.go`).
    const TOKEN: &str = "QDG6eK";
    const AES_KEY: &str = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C";
    const RECEIVE_ID: &str = "wx5823bf96d3bd56c7";

    fn crypt() -> MsgCrypt {
        MsgCrypt::new(SecretString::from(TOKEN), AES_KEY).unwrap()
    }

    #[test]
    fn the_official_url_check_vector_verifies_and_decrypts() {
        let echostr = "P9nAzCzyDtyTWESHep1vC5X9xho/qYX3Zpb4yKa9SKld1DsH3Iyt3tP3zNdtp+4RPcs8TgAE7OaBO+FZXvnaqQ==";
        let opened = crypt()
            .open(
                "5c45ff5e21c57e6ad56bac8758b79b1d9ac89fd3",
                "1409659589",
                "263014780",
                echostr,
            )
            .unwrap();
        assert_eq!(opened.message, b"1616140317555161061");
        assert_eq!(opened.receive_id, RECEIVE_ID);
    }

    const MESSAGE: &str = "CZWs4CWRpI4VolQlvn4dlEC1alN2MUEY2VklGehgBVLBrlVF7SyT+SV+Toj43l4ayJ9UMGKphktKKmP7B2j/P1ey67XB8PBgS7Wr5/8+w/yWriZv3Vmoo/MH3/1HsIWZrPQ3N2mJrelStIfI2Y8kLKXA7EhfZgZX4o+ffdkZDM76SEl79Ib9mw7TGjZ9Aw/x/A2VjNbV1E8BtEbRxYYcQippYNw7hr8sFfa3nW1xLdxokt8QkRX83vK3DFP2F6TQFPL2Tu98UwhcUpPvdJBuu1/yiOQIScppV3eOuLWEsko=";

    #[test]
    fn the_official_message_vector_verifies_and_decrypts() {
        let opened = crypt()
            .open(
                "0623cbc5a8cbee5bcc137c70de99575366fc2af3",
                "1409659813",
                "1372623149",
                MESSAGE,
            )
            .unwrap();
        // What a callback says (a suite ticket, say) is not in the debug output.
        let shown = format!("{opened:?}");
        assert!(!shown.contains("hello"), "{shown}");
        assert_eq!(
            String::from_utf8(opened.message).unwrap(),
            r#"{"ToUserName":"wx5823bf96d3bd56c7","FromUserName":"mycreate","CreateTime": 1409659813,"MsgType":"text","Content":"hello","MsgId":4561255354251345929,"AgentID": 218}"#
        );
        assert_eq!(opened.receive_id, RECEIVE_ID);
    }

    /// WeCom's XML samples (the C#, PHP and Python `WXBizMsgCrypt` samples): the
    /// POST of a message, envelope and all.
    #[test]
    fn the_official_xml_callback_verifies_decrypts_and_reads() {
        let posted = "<xml><ToUserName><![CDATA[wx5823bf96d3bd56c7]]></ToUserName><Encrypt><![CDATA[RypEvHKD8QQKFhvQ6QleEB4J58tiPdvo+rtK1I9qca6aM/wvqnLSV5zEPeusUiX5L5X/0lWfrf0QADHHhGd3QczcdCUpj911L3vg3W/sYYvuJTs3TUUkSUXxaccAS0qhxchrRYt66wiSpGLYL42aM6A8dTT+6k4aSknmPj48kzJs8qLjvd4Xgpue06DOdnLxAUHzM6+kDZ+HMZfJYuR+LtwGc2hgf5gsijff0ekUNXZiqATP7PF5mZxZ3Izoun1s4zG4LUMnvw2r+KqCKIw+3IQH03v+BCA9nMELNqbSf6tiWSrXJB3LAVGUcallcrw8V2t9EL4EhzJWrQUax5wLVMNS0+rUPA3k22Ncx4XXZS9o0MBH27Bo6BpNelZpS+/uh9KsNlY6bHCmJU9p8g7m3fVKn28H3KDYA5Pl/T8Z1ptDAVe0lXdQ2YoyyH2uyPIGHBZZIs2pDBS8R07+qN+E7Q==]]></Encrypt>\n<AgentID><![CDATA[218]]></AgentID>\n</xml>";
        let envelope = super::super::event::fields(posted).unwrap();
        let opened = crypt()
            .open(
                "477715d11cdb4164915debcba66cb864d751f3e6",
                "1409659813",
                "1372623149",
                &envelope["Encrypt"],
            )
            .unwrap();
        assert_eq!(opened.receive_id, RECEIVE_ID);
        let message =
            super::super::event::fields(std::str::from_utf8(&opened.message).unwrap()).unwrap();
        assert_eq!(message["ToUserName"], RECEIVE_ID);
        assert_eq!(message["FromUserName"], "mycreate");
        assert_eq!(message["CreateTime"], "1409659813");
        assert_eq!(message["MsgType"], "text");
        assert_eq!(message["Content"], "hello");
        assert_eq!(message["MsgId"], "4561255354251345929");
        assert_eq!(message["AgentID"], "218");
    }

    #[test]
    fn the_official_signature_is_computed_the_same() {
        assert_eq!(
            crypt().signature("1409659813", "1372623149", MESSAGE),
            "0623cbc5a8cbee5bcc137c70de99575366fc2af3"
        );
    }

    #[test]
    fn encrypting_again_with_the_same_prefix_gives_the_official_ciphertext_back() {
        let crypt = crypt();
        let opened = crypt.decrypt(MESSAGE).unwrap();
        let plain = {
            let mut bytes = general_purpose::STANDARD.decode(MESSAGE).unwrap();
            Decryptor::new(&crypt.key.into(), crypt.iv().into())
                .decrypt_padded_mut::<NoPadding>(&mut bytes)
                .unwrap()
                .to_vec()
        };
        let random: [u8; 16] = plain[..16].try_into().unwrap();
        assert_eq!(
            crypt.encrypt(&opened.message, &opened.receive_id, random),
            MESSAGE
        );
    }

    #[test]
    fn a_round_trip_keeps_message_and_receiver_for_every_length() {
        let crypt = crypt();
        for length in 0..100 {
            let message: Vec<u8> = (0..length).map(|i| (i * 7) as u8).collect();
            let encrypted = crypt.encrypt(&message, "suite-id", [length as u8; 16]);
            let signature = crypt.signature("1", "2", &encrypted);
            let opened = crypt.open(&signature, "1", "2", &encrypted).unwrap();
            assert_eq!(opened.message, message);
            assert_eq!(opened.receive_id, "suite-id");
        }
    }

    #[test]
    fn a_flipped_bit_anywhere_is_refused() {
        let crypt = crypt();
        let encrypted = crypt.encrypt(b"<xml>ticket</xml>", "suite-id", [9; 16]);
        let signature = crypt.signature("1409659813", "1372623149", &encrypted);
        // In the ciphertext: the signature no longer matches.
        let bytes = general_purpose::STANDARD.decode(&encrypted).unwrap();
        for bit in 0..bytes.len() * 8 {
            let mut flipped = bytes.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            let flipped = general_purpose::STANDARD.encode(flipped);
            assert_eq!(
                crypt.open(&signature, "1409659813", "1372623149", &flipped),
                Err(CryptError::SignatureMismatch),
                "bit {bit}"
            );
        }
        // In the signature, the timestamp or the nonce.
        for i in 0..signature.len() {
            let mut flipped = signature.clone().into_bytes();
            flipped[i] = if flipped[i] == b'0' { b'1' } else { b'0' };
            let flipped = String::from_utf8(flipped).unwrap();
            assert!(
                crypt
                    .open(&flipped, "1409659813", "1372623149", &encrypted)
                    .is_err()
            );
        }
        assert!(
            crypt
                .open(&signature, "1409659814", "1372623149", &encrypted)
                .is_err()
        );
        assert!(
            crypt
                .open(&signature, "1409659813", "1372623148", &encrypted)
                .is_err()
        );
    }

    #[test]
    fn a_ciphertext_under_another_key_or_garbage_never_panics_and_is_refused() {
        let crypt = crypt();
        let other = MsgCrypt::new(
            SecretString::from(TOKEN),
            "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG",
        )
        .unwrap();
        let foreign = other.encrypt(b"hello", RECEIVE_ID, [1; 16]);
        assert_ne!(
            crypt.decrypt(&foreign).map(|opened| opened.message),
            Ok(b"hello".to_vec())
        );
        for garbage in ["", "not base64!", "AAAA", &"A".repeat(44), "////"] {
            assert!(crypt.decrypt(garbage).is_err(), "{garbage:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn any_ciphertext_is_opened_or_refused_without_panicking(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)
        ) {
            let _ = crypt().decrypt(&general_purpose::STANDARD.encode(&bytes));
        }
    }

    #[test]
    fn a_bad_aes_key_is_refused() {
        for key in [
            "",
            "short",
            &"A".repeat(44),
            "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!",
        ] {
            assert_eq!(
                MsgCrypt::new(SecretString::from(TOKEN), key).unwrap_err(),
                CryptError::InvalidAesKey
            );
        }
    }

    #[test]
    fn debug_shows_neither_token_nor_key() {
        assert_eq!(format!("{:?}", crypt()), "MsgCrypt(****)");
    }
}
