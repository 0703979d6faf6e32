/// What a read may return, and so which members may answer it. Chosen per client and per call.
///
/// | mode | answered by | returns |
/// |---|---|---|
/// | ``linearizable`` | any member (CRAQ) | the newest committed version: every acknowledged write, nothing uncommitted |
/// | ``tail`` | the tail only (classic chain replication) | the same, at the cost of one node's read throughput |
/// | ``any`` | any member | that member's newest durable version: possibly stale, possibly a write that is never committed |
public enum ReadMode: UInt8, Hashable, Sendable, CaseIterable, CustomStringConvertible {
    /// From any member, linearizable (CRAQ, Terrace & Freedman 2009): a member answers from
    /// what it holds when the key's newest version there is committed (at or below what the
    /// chain acknowledged to it); for a key with a write in flight ("dirty") it asks the tail
    /// which version is committed and answers with that one, which it holds. The default.
    case linearizable = 0
    /// From the tail only: classic chain replication, where the tail's durable versions are
    /// the committed ones.
    case tail = 1
    /// From any member, its newest durable version whether committed or not: it may lag the
    /// chain (stale) and, read at a member above the tail, may be a write that a failure
    /// later undoes. For reads that tolerate both.
    case any = 2

    /// The name used on the command line and in logs.
    public var description: String {
        switch self {
        case .linearizable: "linearizable"
        case .tail: "tail"
        case .any: "any"
        }
    }

    /// The mode named `name` (as ``description`` spells it), or nil.
    public init?(name: String) {
        guard let mode = Self.allCases.first(where: { $0.description == name }) else { return nil }
        self = mode
    }
}
