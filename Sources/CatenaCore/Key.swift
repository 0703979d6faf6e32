/// An object key: 1 to 1024 bytes of UTF-8 without NUL.
///
/// Keys are byte strings. They are compared, hashed and sorted byte-wise — never with Swift's
/// Unicode-aware `String ==` — so the NFC and NFD spellings of "café" are two different keys.
public struct Key: Hashable, Comparable, Sendable, CustomStringConvertible {
    /// The longest key, in bytes.
    public static let maxLength = 1024

    /// The key's bytes, exactly as the client sent them.
    public let bytes: [UInt8]

    /// Creates a key from the UTF-8 bytes of `string`, without normalizing it.
    public init(_ string: String) throws(CatenaError) {
        try self.init(bytes: Array(string.utf8))
    }

    /// Creates a key from raw bytes, checking that they form a valid key.
    public init<Bytes: Collection<UInt8>>(bytes: Bytes) throws(CatenaError) {
        let array = Array(bytes)
        if let problem = Key.problem(with: array) {
            throw CatenaError(.invalidKey, problem)
        }
        self.bytes = array
    }

    /// Wraps bytes the caller validates (or has validated) itself.
    init(unchecked bytes: [UInt8]) {
        self.bytes = bytes
    }

    /// Why `bytes` is not a valid key, or nil if it is one.
    public static func problem(with bytes: [UInt8]) -> String? {
        if bytes.isEmpty { return "key is empty" }
        if bytes.count > maxLength { return "key is \(bytes.count) bytes; the limit is \(maxLength)" }
        if let nul = bytes.firstIndex(of: 0) { return "key contains NUL at byte \(nul)" }
        if String(validating: bytes, as: UTF8.self) == nil { return "key is not valid UTF-8" }
        return nil
    }

    /// The key as text (always valid: keys are UTF-8).
    public var string: String { String(decoding: bytes, as: UTF8.self) }

    /// Whether the key's bytes start with `prefix`'s bytes.
    public func hasPrefix(_ prefix: [UInt8]) -> Bool {
        prefix.count <= bytes.count && bytes.starts(with: prefix)
    }

    /// Byte-wise (unsigned, lexicographic) order.
    public static func < (lhs: Key, rhs: Key) -> Bool {
        lhs.bytes.withUnsafeBytes { l in
            rhs.bytes.withUnsafeBytes { r in
                let common = min(l.count, r.count)
                let c = memcmpBytes(l.baseAddress!, r.baseAddress!, common)
                return c != 0 ? c < 0 : l.count < r.count
            }
        }
    }

    /// The key as text.
    public var description: String { string }
}

@inline(__always)
private func memcmpBytes(_ a: UnsafeRawPointer, _ b: UnsafeRawPointer, _ n: Int) -> Int {
    var i = 0
    while i < n {
        let x = a.load(fromByteOffset: i, as: UInt8.self)
        let y = b.load(fromByteOffset: i, as: UInt8.self)
        if x != y { return Int(x) - Int(y) }
        i += 1
    }
    return 0
}
