/// A log sequence number: the epoch of the chain configuration under which the head assigned
/// it, and a sequence number that is contiguous across the whole chain history and never reset.
///
/// Ordered by `(epoch, seq)`. Within one valid log both grow together, so this is also log order.
public struct LSN: Hashable, Comparable, Sendable, CustomStringConvertible {
    /// The configuration epoch under which the head assigned this LSN.
    public var epoch: UInt64
    /// The position in the chain's history, starting at 1.
    public var seq: UInt64

    /// Creates an LSN.
    public init(epoch: UInt64, seq: UInt64) {
        self.epoch = epoch
        self.seq = seq
    }

    /// The LSN before any record: "nothing yet".
    public static let zero = LSN(epoch: 0, seq: 0)

    /// Log order: by epoch, then by seq.
    public static func < (lhs: LSN, rhs: LSN) -> Bool {
        (lhs.epoch, lhs.seq) < (rhs.epoch, rhs.seq)
    }

    /// `epoch.seq`.
    public var description: String { "\(epoch).\(seq)" }

    /// Parses the `epoch.seq` form of ``description`` (as `catena stat` prints it); nil for
    /// anything else.
    public init?(parsing text: some StringProtocol) {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 2, let epoch = UInt64(parts[0]), let seq = UInt64(parts[1]) else { return nil }
        self.init(epoch: epoch, seq: seq)
    }
}

/// The id of a chain. One chain for now; every record names its chain so many can come later.
public typealias ChainID = UInt32

/// A 128-bit client request id, kept with each write so a retried write gets its original result.
public struct RequestID: Hashable, Sendable, CustomStringConvertible {
    /// The high 64 bits (by convention the client's id).
    public var high: UInt64
    /// The low 64 bits (by convention the client's request counter).
    public var low: UInt64

    /// Creates a request id.
    public init(high: UInt64, low: UInt64) {
        self.high = high
        self.low = low
    }

    /// No request id (internal writes).
    public static let none = RequestID(high: 0, low: 0)

    /// A random request id.
    public static func random() -> RequestID {
        var g = SystemRandomNumberGenerator()
        return random(using: &g)
    }

    /// A random id from `generator`; never ``none``.
    public static func random<G: RandomNumberGenerator>(using generator: inout G) -> RequestID {
        RequestID(high: generator.next(), low: generator.next())
    }

    /// Parses the 32 hex digits of ``description``; nil for anything else.
    public init?(parsing text: some StringProtocol) {
        guard text.count == 32, text.allSatisfy(\.isHexDigit), let high = UInt64(text.prefix(16), radix: 16), let low = UInt64(text.suffix(16), radix: 16) else { return nil }
        self.init(high: high, low: low)
    }

    /// 32 hex digits, high half first.
    public var description: String {
        high.hex16 + low.hex16
    }
}

/// The id of a large-object upload: its chunk records and its manifest share it.
public typealias UploadID = RequestID
