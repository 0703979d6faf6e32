/// Appends little-endian integers to a byte array.
extension UInt64 {
    /// The value as 16 lowercase hex digits, zero-padded (how checksums and ids are printed).
    public var hex16: String {
        let digits = String(self, radix: 16)
        return String(repeating: "0", count: 16 - digits.count) + digits
    }
}

public struct ByteWriter: Sendable {
    /// The bytes written so far.
    public var bytes: [UInt8]

    /// Creates an empty writer.
    public init(capacity: Int = 0) {
        bytes = []
        bytes.reserveCapacity(capacity)
    }

    /// Appends one byte.
    @inlinable public mutating func u8(_ v: UInt8) { bytes.append(v) }
    /// Appends a little-endian u16.
    @inlinable public mutating func u16(_ v: UInt16) { append(v) }
    /// Appends a little-endian u32.
    @inlinable public mutating func u32(_ v: UInt32) { append(v) }
    /// Appends a little-endian u64.
    @inlinable public mutating func u64(_ v: UInt64) { append(v) }
    /// Appends raw bytes.
    @inlinable public mutating func raw<C: Collection<UInt8>>(_ c: C) { bytes.append(contentsOf: c) }

    @inlinable mutating func append<T: FixedWidthInteger>(_ v: T) {
        withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) }
    }
}

/// Reads little-endian integers from a byte array. Callers check lengths first; reading past the
/// end traps.
public struct ByteReader: Sendable {
    /// The bytes being read.
    public let bytes: [UInt8]
    /// The next position to read.
    public var offset: Int

    /// Creates a reader at offset 0.
    public init(_ bytes: [UInt8]) {
        self.bytes = bytes
        self.offset = 0
    }

    /// Bytes left to read.
    public var remaining: Int { bytes.count - offset }

    /// Reads one byte.
    public mutating func u8() -> UInt8 { defer { offset += 1 }; return bytes[offset] }
    /// Reads a little-endian u16.
    public mutating func u16() -> UInt16 { read() }
    /// Reads a little-endian u32.
    public mutating func u32() -> UInt32 { read() }
    /// Reads a little-endian u64.
    public mutating func u64() -> UInt64 { read() }
    /// Reads `n` raw bytes.
    public mutating func raw(_ n: Int) -> ArraySlice<UInt8> {
        defer { offset += n }
        return bytes[offset..<(offset + n)]
    }

    mutating func read<T: FixedWidthInteger>() -> T {
        let size = MemoryLayout<T>.size
        precondition(offset + size <= bytes.count, "ByteReader: read past end")
        let v = bytes.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: offset, as: T.self) }
        offset += size
        return T(littleEndian: v)
    }
}

extension UnsafeRawBufferPointer {
    /// Loads a little-endian integer at `offset` (no alignment needed).
    @inlinable
    public func le<T: FixedWidthInteger>(_ offset: Int, as: T.Type = T.self) -> T {
        T(littleEndian: loadUnaligned(fromByteOffset: offset, as: T.self))
    }
}

extension UnsafeMutableRawBufferPointer {
    /// Stores a little-endian integer at `offset` (no alignment needed).
    @inlinable
    public func setLE<T: FixedWidthInteger>(_ value: T, at offset: Int) {
        storeBytes(of: value.littleEndian, toByteOffset: offset, as: T.self)
    }
}
