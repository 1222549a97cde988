//! An independent `aes-xts-plain64` decryption: OpenSSL's AES-256-XTS
//! through Python's `cryptography`, one data unit per sector, tweak = the
//! sector number (little endian). Fails, never skips, when python3 or
//! `cryptography` is missing.

use std::io::Write;
use std::process::{Command, Stdio};

/// Decrypts `data` (whole sectors, the first being sector `first_sector`)
/// with `key` (64 bytes).
pub fn openssl_decrypt(key: &[u8], sector_size: usize, first_sector: u64, data: &[u8]) -> Vec<u8> {
    let script = "import sys\n\
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes\n\
        key = bytes.fromhex(sys.argv[1]); ss = int(sys.argv[2]); first = int(sys.argv[3])\n\
        data = sys.stdin.buffer.read(); out = bytearray()\n\
        for i in range(0, len(data), ss):\n\
        \x20   tweak = (first + i // ss).to_bytes(16, 'little')\n\
        \x20   d = Cipher(algorithms.AES(key), modes.XTS(tweak)).decryptor()\n\
        \x20   out += d.update(data[i:i + ss]) + d.finalize()\n\
        sys.stdout.buffer.write(bytes(out))\n";
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    let mut child = Command::new("python3")
        .args([
            "-c",
            script,
            &hex,
            &sector_size.to_string(),
            &first_sector.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 with the cryptography package (OpenSSL) must be installed");
    let mut stdin = child.stdin.take().expect("stdin");
    let input = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().expect("python3 ran");
    writer.join().expect("writer").expect("wrote to python3");
    assert!(out.status.success(), "OpenSSL XTS oracle failed");
    out.stdout
}
