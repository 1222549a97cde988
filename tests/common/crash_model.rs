//! The model a simulated power-loss test checks a volume against: what
//! each byte must hold after a crash, given which writes were acknowledged
//! durable (FUA, or followed by an acknowledged FLUSH) and which were only
//! issued. Used by `volume_power_loss` and `volume_reencrypt_power_loss`.

/// What the model knows about the plaintext device.
pub struct Model {
    /// Value of each byte as of its last durable change.
    pub durable: Vec<u8>,
    /// Bytes changed since by an operation not yet made durable.
    uncertain: Vec<bool>,
    /// Those operations, in order: (offset, bytes written).
    layers: Vec<(usize, Vec<u8>)>,
}

impl Model {
    pub fn new(size: usize) -> Self {
        Model {
            durable: vec![0; size],
            uncertain: vec![false; size],
            layers: Vec::new(),
        }
    }

    /// Before the operation is issued: it may land, whatever happens next.
    pub fn issue(&mut self, off: usize, data: Vec<u8>) {
        self.uncertain[off..off + data.len()].fill(true);
        self.layers.push((off, data));
    }

    /// The operation was acknowledged with FUA: its bytes are durable.
    pub fn durable_now(&mut self, off: usize, data: &[u8]) {
        self.durable[off..off + data.len()].copy_from_slice(data);
        self.uncertain[off..off + data.len()].fill(false);
    }

    /// A FLUSH was acknowledged: everything acknowledged before is durable.
    pub fn flushed(&mut self) {
        for (off, data) in std::mem::take(&mut self.layers) {
            self.durable[off..off + data.len()].copy_from_slice(&data);
        }
        self.uncertain.fill(false);
    }

    pub fn check(&self, got: &[u8], what: &str) {
        for i in 0..self.durable.len() {
            if got[i] == self.durable[i] {
                continue;
            }
            assert!(
                self.uncertain[i],
                "{what}: byte {i} is {:#04x}, but {:#04x} was made durable there",
                got[i], self.durable[i]
            );
            let written = self
                .layers
                .iter()
                .any(|(off, d)| (*off..off + d.len()).contains(&i) && d[i - off] == got[i]);
            assert!(
                written,
                "{what}: byte {i} is {:#04x}: neither its durable value {:#04x} nor anything written there since",
                got[i], self.durable[i]
            );
        }
    }
}
