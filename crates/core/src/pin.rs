//! Staff PINs are stored only as a slow hash (Argon2id).

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};

/// Why a PIN is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PinError {
    #[error("a PIN is 4 to 8 digits")]
    Shape,
}

/// Checks the shape of a PIN: 4 to 8 ASCII digits.
pub fn check_pin(pin: &str) -> Result<(), PinError> {
    if (4..=8).contains(&pin.len()) && pin.bytes().all(|b| b.is_ascii_digit()) { Ok(()) } else { Err(PinError::Shape) }
}

/// Hashes a PIN with a salt drawn by the caller.
pub fn hash_pin(pin: &str, salt: [u8; 16]) -> Result<String, PinError> {
    check_pin(pin)?;
    let salt = SaltString::encode_b64(&salt).expect("16 bytes is a valid salt");
    Ok(Argon2::default().hash_password(pin.as_bytes(), &salt).expect("argon2 with default params").to_string())
}

/// Checks a PIN against a stored hash (constant time inside argon2).
pub fn verify_pin(pin: &str, hash: &str) -> bool {
    match PasswordHash::new(hash) {
        Ok(parsed) => Argon2::default().verify_password(pin.as_bytes(), &parsed).is_ok(),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_verify_only_against_their_hash() {
        let h = hash_pin("1234", [7; 16]).unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(!h.contains("1234$"));
        assert!(verify_pin("1234", &h));
        assert!(!verify_pin("1235", &h));
        assert!(!verify_pin("1234", "garbage"));
        assert!(hash_pin("12", [0; 16]).is_err());
        assert!(hash_pin("12a4", [0; 16]).is_err());
    }
}
