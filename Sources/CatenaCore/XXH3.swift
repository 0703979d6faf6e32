import CXXHash

/// XXH3-64 from Debian's libxxhash: the checksum of records, frames, files and object contents.
public enum XXH3 {
    /// The XXH3-64 hash (seed 0) of `bytes`.
    @inlinable
    public static func hash(_ bytes: UnsafeRawBufferPointer) -> UInt64 {
        XXH3_64bits(bytes.baseAddress, bytes.count)
    }

    /// The XXH3-64 hash of `bytes` with `seed` (chains two regions without a streaming state).
    @inlinable
    public static func hash(_ bytes: UnsafeRawBufferPointer, seed: UInt64) -> UInt64 {
        XXH3_64bits_withSeed(bytes.baseAddress, bytes.count, seed)
    }

    /// The XXH3-64 hash (seed 0) of `bytes`.
    @inlinable
    public static func hash<Bytes: ContiguousBytes>(_ bytes: Bytes) -> UInt64 {
        bytes.withUnsafeBytes { hash($0) }
    }
}

/// XXH32 from Debian's libxxhash: the checksum of the LZ4 frame format (block and content
/// checksums), where the format prescribes it.
public enum XXH32 {
    /// The XXH32 hash of `bytes` with `seed` (the LZ4 frame format uses seed 0).
    @inlinable
    public static func hash(_ bytes: UnsafeRawBufferPointer, seed: UInt32 = 0) -> UInt32 {
        CXXHash.XXH32(bytes.baseAddress, bytes.count, seed)
    }
}

/// An incremental XXH3-64 hasher, for data that arrives in pieces (streamed objects).
///
/// The result equals ``XXH3/hash(_:)-(UnsafeRawBufferPointer)`` of the concatenated input.
/// Not `Sendable`: one owner feeds it.
public final class XXH3Hasher {
    private let state: OpaquePointer

    /// Creates a hasher with seed 0.
    public init() {
        guard let state = XXH3_createState() else { fatalError("XXH3_createState: out of memory") }
        self.state = state
        XXH3_64bits_reset(state)
    }

    deinit { XXH3_freeState(state) }

    /// Feeds `bytes`.
    public func update(_ bytes: UnsafeRawBufferPointer) {
        guard bytes.count > 0 else { return }
        XXH3_64bits_update(state, bytes.baseAddress, bytes.count)
    }

    /// Feeds `bytes`.
    public func update<Bytes: ContiguousBytes>(_ bytes: Bytes) {
        bytes.withUnsafeBytes { update($0) }
    }

    /// Starts over, as if just created.
    public func reset() { XXH3_64bits_reset(state) }

    /// The hash of everything fed so far (the hasher may continue to be fed).
    public func digest() -> UInt64 { XXH3_64bits_digest(state) }
}

/// ContiguousBytes without Foundation: arrays and slices of bytes.
public protocol ContiguousBytes {
    /// Calls `body` with the bytes.
    func withUnsafeBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R
}

extension Array: ContiguousBytes where Element == UInt8 {}
extension ArraySlice: ContiguousBytes where Element == UInt8 {}
extension ContiguousArray: ContiguousBytes where Element == UInt8 {}
