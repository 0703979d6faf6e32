import CatenaCore

/// Who wrote a value of the load generator's, and which of its writes it was: the first
/// ``size`` bytes of every value `catena bench` writes. The rest of the value is a pattern
/// drawn from the stamp, so a value read back can be checked on its own — every byte — and
/// traced to the write that made it.
public struct LoadStamp: Hashable, Sendable, CustomStringConvertible {
    /// Bytes a stamp takes at the start of a value: magic, run, writer, sequence, key hash.
    public static let size = 32
    /// "CTNB", little-endian.
    static let magic: UInt32 = 0x424E_5443

    /// The run that wrote it (random per run): values of other runs are told apart.
    public var run: UInt64
    /// The worker that wrote it.
    public var writer: UInt32
    /// The writer's sequence number of the write, from 1.
    public var sequence: UInt64
    /// XXH3 of the key it was written under.
    public var keyHash: UInt64

    public init(run: UInt64, writer: UInt32, sequence: UInt64, keyHash: UInt64) {
        self.run = run
        self.writer = writer
        self.sequence = sequence
        self.keyHash = keyHash
    }

    public var description: String { "run \(run.hex16) writer \(writer) write \(sequence)" }

    /// A value of `size` bytes (at least ``size``) that starts with this stamp.
    public func value(size: Int) -> [UInt8] {
        precondition(size >= Self.size)
        var bytes = [UInt8](repeating: 0, count: size)
        bytes.withUnsafeMutableBytes { raw in
            raw.storeBytes(of: Self.magic.littleEndian, toByteOffset: 0, as: UInt32.self)
            raw.storeBytes(of: writer.littleEndian, toByteOffset: 4, as: UInt32.self)
            raw.storeBytes(of: run.littleEndian, toByteOffset: 8, as: UInt64.self)
            raw.storeBytes(of: sequence.littleEndian, toByteOffset: 16, as: UInt64.self)
            raw.storeBytes(of: keyHash.littleEndian, toByteOffset: 24, as: UInt64.self)
            Self.fillPattern(raw, from: Self.size, seed: patternSeed)
        }
        return bytes
    }

    /// The stamp at the start of `bytes`, if there is one.
    public init?(reading bytes: [UInt8]) {
        guard bytes.count >= Self.size else { return nil }
        let fields = bytes.withUnsafeBytes { raw in
            (UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: 0, as: UInt32.self)),
             UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: 4, as: UInt32.self)),
             UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: 8, as: UInt64.self)),
             UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: 16, as: UInt64.self)),
             UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: 24, as: UInt64.self)))
        }
        guard fields.0 == Self.magic else { return nil }
        self.init(run: fields.2, writer: fields.1, sequence: fields.3, keyHash: fields.4)
    }

    /// Whether every byte of `bytes` after the stamp is the pattern this stamp draws.
    public func patternMatches(_ bytes: [UInt8]) -> Bool {
        guard bytes.count >= Self.size else { return false }
        var expected = [UInt8](repeating: 0, count: bytes.count)
        expected.withUnsafeMutableBytes { Self.fillPattern($0, from: Self.size, seed: patternSeed) }
        return bytes[Self.size...].elementsEqual(expected[Self.size...])
    }

    private var patternSeed: UInt64 { run ^ (UInt64(writer) << 40) ^ sequence &* 0x9E37_79B9_7F4A_7C15 ^ keyHash }

    /// Fills `raw` from `offset` on with SplitMix64 words of `seed`.
    static func fillPattern(_ raw: UnsafeMutableRawBufferPointer, from offset: Int, seed: UInt64) {
        var random = SplitMix64(seed: seed)
        var i = offset
        while i + 8 <= raw.count {
            raw.storeBytes(of: random.next(), toByteOffset: i, as: UInt64.self)
            i += 8
        }
        if i < raw.count {
            var last = random.next()
            while i < raw.count {
                raw[i] = UInt8(truncatingIfNeeded: last)
                last >>= 8
                i += 1
            }
        }
    }
}
