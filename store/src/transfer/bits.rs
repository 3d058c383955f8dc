//! Bitfields of chunks: which a node has, one bit per chunk.

pub(crate) fn bit(bits: &[u8], i: usize) -> bool {
    bits.get(i / 8).is_some_and(|b| b & (1 << (i % 8)) != 0)
}

pub(crate) fn set_bit(bits: &mut [u8], i: usize) {
    bits[i / 8] |= 1 << (i % 8);
}

pub(crate) fn clear_bit(bits: &mut [u8], i: usize) {
    bits[i / 8] &= !(1 << (i % 8));
}

/// Every one of `n` chunks.
pub(crate) fn all_bits(n: usize) -> Vec<u8> {
    let mut bits = vec![0xffu8; n.div_ceil(8)];
    if !n.is_multiple_of(8) {
        if let Some(last) = bits.last_mut() {
            *last = (1u8 << (n % 8)) - 1;
        }
    }
    bits
}

pub(crate) fn count_bits(bits: &[u8], n: usize) -> usize {
    let whole = (n / 8).min(bits.len());
    let ones: usize = bits[..whole].iter().map(|b| b.count_ones() as usize).sum();
    ones + (whole * 8..n).filter(|i| bit(bits, *i)).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitfields() {
        let mut b = vec![0u8; 2];
        set_bit(&mut b, 0);
        set_bit(&mut b, 9);
        assert!(bit(&b, 0) && bit(&b, 9) && !bit(&b, 1));
        assert_eq!(count_bits(&b, 16), 2);
        assert!(!bit(&b, 100));
        clear_bit(&mut b, 9);
        assert_eq!(count_bits(&b, 16), 1);
        assert_eq!(count_bits(&b, 1), 1);
        assert_eq!(count_bits(&[0xff, 0xff], 12), 12);
        assert_eq!(count_bits(&[0xff], 12), 8, "past the end: not set");
        assert_eq!(all_bits(12), [0xff, 0x0f]);
        assert_eq!(all_bits(16), [0xff, 0xff]);
        assert!(all_bits(0).is_empty());
    }
}
