import CatenaCore

/// Options of one request, carried in its frame's header extension (``Frame/headerExtension``)
/// as tagged fields: tag (u8), length (u8), value. A reader skips tags it does not know, and a
/// node from before an option ignores the whole extension — so every option is chosen such that
/// being ignored is safe: a node that does not know ``readMode`` answers as the tail only
/// (other members redirect there); a head that does not know ``ack`` answers once the write
/// is committed (mode all, the strongest).
///
/// | tag | option | value |
/// |---|---|---|
/// | 1 | ``readMode`` | u8: 0 linearizable, 1 tail, 2 any |
/// | 2 | ``ack`` | u8: 0 all, k ≥ 1 the first k members (1: the head) |
/// | 3 | ``session`` | LSN (epoch u64, seq u64): a read in mode any is answered only by a member holding everything through it |
public struct RequestOptions: Hashable, Sendable {
    /// How a read may be answered; nil: ``ReadMode/tail``, what a client from before read
    /// modes expects.
    public var readMode: ReadMode?
    /// When the head answers a write; nil: ``AckMode/all``.
    public var ack: AckMode?
    /// The highest LSN the reader's session has seen: a read in mode ``ReadMode/any`` is
    /// answered only by a member that holds everything through it. A node from before sessions
    /// does not serve mode any at all (it redirects to the tail), so ignoring it is safe.
    public var session: LSN?

    /// Options; nil leaves each out.
    public init(readMode: ReadMode? = nil, ack: AckMode? = nil, session: LSN? = nil) {
        self.readMode = readMode
        self.ack = ack
        self.session = session
    }

    static let readModeTag: UInt8 = 1
    static let ackTag: UInt8 = 2
    static let sessionTag: UInt8 = 3

    /// The header extension bytes (empty when no option is set).
    public func encoded() -> [UInt8] {
        var bytes: [UInt8] = []
        if let readMode { bytes += [Self.readModeTag, 1, readMode.rawValue] }
        if let ack, ack != .all { bytes += [Self.ackTag, 1, UInt8(ack.members ?? 0)] }
        if let session {
            bytes += [Self.sessionTag, 16]
            for v in [session.epoch, session.seq] { withUnsafeBytes(of: v.littleEndian) { bytes += $0 } }
        }
        return bytes
    }

    /// Parses a header extension. A field that runs past the end, or a read mode this build does
    /// not know, is `malformed`: the request is refused, not served in another mode.
    public init(decoding bytes: [UInt8]) throws(CatenaError) {
        var i = 0
        while i < bytes.count {
            guard i + 2 <= bytes.count, i + 2 + Int(bytes[i + 1]) <= bytes.count else {
                throw CatenaError(.malformed, "a request option at byte \(i) of the frame header extension runs past its end")
            }
            let tag = bytes[i], value = bytes[(i + 2)..<(i + 2 + Int(bytes[i + 1]))]
            switch tag {
            case Self.readModeTag:
                guard value.count == 1, let mode = ReadMode(rawValue: value[value.startIndex]) else {
                    throw CatenaError(.malformed, "unknown read mode \(Array(value)) in the request options")
                }
                readMode = mode
            case Self.ackTag:
                guard value.count == 1 else {
                    throw CatenaError(.malformed, "an acknowledgement mode is one byte, not \(value.count)")
                }
                let k = value[value.startIndex]
                ack = k == 0 ? .all : .first(Int(k))
            case Self.sessionTag:
                guard value.count == 16 else {
                    throw CatenaError(.malformed, "a session LSN is 16 bytes, not \(value.count)")
                }
                func u64(_ at: Int) -> UInt64 {
                    (0..<8).reduce(UInt64(0)) { $0 | UInt64(value[value.startIndex + at + $1]) << (8 * UInt64($1)) }
                }
                session = LSN(epoch: u64(0), seq: u64(8))
            default:
                break
            }
            i += 2 + value.count
        }
    }
}

extension Frame {
    /// The request options this frame carries (``RequestOptions``).
    public var options: RequestOptions {
        get throws(CatenaError) { try RequestOptions(decoding: headerExtension) }
    }
}
