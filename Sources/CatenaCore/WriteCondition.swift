/// What a conditional write requires of its key's newest version: the compare in
/// compare-and-swap.
///
/// The head decides it atomically against the newest version in its log — committed or still
/// in flight — when it gives the write its LSN, so the condition holds at the write's place in
/// the chain's history: two writes that each require the version they read cannot both
/// succeed. A write whose condition does not hold is refused with
/// ``CatenaError/Code/preconditionFailed`` and nothing is written.
public enum WriteCondition: Hashable, Sendable, CustomStringConvertible {
    /// No object is stored under the key: it was never written, or its newest version is a
    /// delete. For puts ("create only").
    case absent
    /// The key's newest version is the one written at this LSN (``ObjectInfo/lsn``, or a
    /// write's receipt) and is not deleted.
    case version(LSN)
    /// An object is stored under the key and its content checksum (XXH3-64 of its bytes,
    /// ``ObjectInfo/contentChecksum``) is this.
    case contentChecksum(UInt64)

    /// E.g. `absent`, `version 1.42`, `checksum 00ff…`.
    public var description: String {
        switch self {
        case .absent: "absent"
        case .version(let lsn): "version \(lsn)"
        case .contentChecksum(let c): "checksum \(Self.hex(c))"
        }
    }

    /// Whether the condition holds when `current` is the key's newest version (nil: absent).
    public func holds(for current: KeyVersion?) -> Bool {
        switch self {
        case .absent: current == nil
        case .version(let lsn): current?.lsn == lsn
        case .contentChecksum(let checksum): current?.contentChecksum == checksum
        }
    }

    /// 16 hex digits.
    static func hex(_ v: UInt64) -> String {
        let digits = String(v, radix: 16)
        return String(repeating: "0", count: 16 - digits.count) + digits
    }

    // MARK: - Wire form

    /// The must-understand extension field that carries a condition in a write request (never
    /// in a record: the head takes it out). A head too old to know it refuses the write with
    /// ``CatenaError/Code/unknownMustUnderstandField`` instead of writing unconditionally.
    public static let extensionTag: UInt16 = 4

    /// The condition as a write request's extension field: kind (u8: 1 absent, 2 version,
    /// 3 checksum) and its operand (an LSN as epoch u64 and seq u64, or a u64).
    public var encodedExtension: RecordExtension {
        var out = ByteWriter(capacity: 17)
        switch self {
        case .absent:
            out.u8(1)
        case .version(let lsn):
            out.u8(2); out.u64(lsn.epoch); out.u64(lsn.seq)
        case .contentChecksum(let checksum):
            out.u8(3); out.u64(checksum)
        }
        return RecordExtension(tag: Self.extensionTag, mustUnderstand: true, value: out.bytes)
    }

    /// Parses a condition field's value.
    public init(decoding bytes: [UInt8]) throws(CatenaError) {
        var r = ByteReader(bytes)
        switch (bytes.first, bytes.count) {
        case (1, 1):
            self = .absent
        case (2, 17):
            _ = r.u8()
            self = .version(LSN(epoch: r.u64(), seq: r.u64()))
        case (3, 9):
            _ = r.u8()
            self = .contentChecksum(r.u64())
        default:
            throw CatenaError(.malformed, "write condition of \(bytes.count) bytes, kind \(bytes.first.map(String.init) ?? "none"), is not one this build knows")
        }
    }

    /// Refuses a condition on a write that cannot carry it: only puts, manifests (the write
    /// that makes a chunked object visible) and deletes take one, and a delete not `absent`.
    public static func check(_ condition: WriteCondition, on type: RecordType, key: Key) throws(CatenaError) {
        switch (type, condition) {
        case (.put, _), (.manifest, _), (.delete, .version), (.delete, .contentChecksum):
            return
        default:
            throw CatenaError(.invalidArgument, "a \(type) of '\(key)' cannot be conditional on \(condition) (conditions go on puts, on a chunked object's manifest, and on deletes as version or checksum)")
        }
    }
}

/// The newest version of a key as the head compares it with a ``WriteCondition``.
public struct KeyVersion: Hashable, Sendable, CustomStringConvertible {
    /// Where it is in the log.
    public var lsn: LSN
    /// XXH3-64 of its content.
    public var contentChecksum: UInt64

    /// Creates a version.
    public init(lsn: LSN, contentChecksum: UInt64) {
        self.lsn = lsn
        self.contentChecksum = contentChecksum
    }

    /// `version 1.42, checksum 00ff…`.
    public var description: String { "version \(lsn), checksum \(WriteCondition.hex(contentChecksum))" }
}
