/// When the head answers a write: once every member holds it durably (committed), once the
/// first k members do (semi-synchronous), or once the head does (asynchronous). Chosen per
/// write. A write acknowledged in a weaker mode is still replicated to every member in order;
/// the mode only changes when its client hears back — and what a failure can take from it:
///
/// | mode | acknowledged once | lost only if |
/// |---|---|---|
/// | ``all`` | every member holds it durably: committed | never, while one replica of the chain survives |
/// | ``first(_:)`` k | members 1…k (head first) hold it durably | all k of them fail, or are removed, before it reaches the next member |
/// | ``head`` | the head holds it durably | the head fails, or is removed, before its successor holds it |
///
/// A linearizable read returns a write only once it is committed, whatever its mode: a weak
/// acknowledgement says the write is durable somewhere, not that readers see it yet.
public struct AckMode: Hashable, Sendable, CustomStringConvertible {
    /// How many members must hold the write, head first; nil: all of them.
    public let members: Int?

    private init(members: Int?) { self.members = members }

    /// Every member (the default): the write is committed.
    public static let all = AckMode(members: nil)
    /// The head alone (asynchronous replication).
    public static let head = AckMode(members: 1)
    /// The first `k` members, head first (semi-synchronous); `k` is clamped to 1 ... 255, and a
    /// `k` at least the chain's length means all of them.
    public static func first(_ k: Int) -> AckMode { AckMode(members: min(max(k, 1), 255)) }

    /// `all`, `head`, or k (`2`, `3`, …) — what `catena put --ack` takes.
    public var description: String {
        switch members {
        case nil: "all"
        case 1: "head"
        case let k?: "\(k)"
        }
    }

    /// The mode named as ``description`` spells it, or nil.
    public init?(name: String) {
        switch name {
        case "all": self = .all
        case "head": self = .head
        default:
            guard let k = Int(name), (1...255).contains(k) else { return nil }
            self = .first(k)
        }
    }

    /// Whether a write is held as this mode asks, given how far the head holds its log
    /// durably (`heldThrough[0]`), and each member after it (`heldThrough[1]`, …), and how
    /// far the chain committed. A member past the end of `heldThrough` counts as committed.
    func isHeld(_ lsn: LSN, heldThrough: [LSN], committed: LSN) -> Bool {
        guard let k = members else { return lsn.seq <= committed.seq }
        if k - 1 < heldThrough.count { return lsn.seq <= heldThrough[k - 1].seq }
        return lsn.seq <= committed.seq
    }
}
