/// When an epoch began: the first sequence number written in it, once known.
///
/// The head of a new epoch reports the seq it will write first (its log's last seq + 1) and
/// takes no writes until the master has recorded it; so an epoch whose first seq is unknown
/// holds no records. A rejoining node uses the history to find the last record it shares with
/// the chain (``EpochHistory/lastShared(myLastSeq:epochAt:)``).
public struct EpochStart: Hashable, Sendable {
    /// The epoch.
    public var epoch: UInt64
    /// The first seq of the epoch; nil until the epoch's head reported it.
    public var firstSeq: UInt64?

    /// Creates an entry.
    public init(epoch: UInt64, firstSeq: UInt64? = nil) {
        self.epoch = epoch
        self.firstSeq = firstSeq
    }
}

/// The chain's epochs, oldest first, as the master keeps them: which epoch wrote which seqs.
///
/// LSN = (epoch, seq) and only the head of an epoch assigns LSNs of that epoch, so two logs that
/// hold the same LSN hold the same record there — and, since every head continues its own log,
/// the same records below it (the log matching property). The chain's record at seq `s` was
/// written in the latest epoch whose first seq is ≤ `s`: a later head continues from its own
/// log's end, which may be below what an earlier, replaced head wrote (those writes never
/// committed), so first seqs need not grow with epochs.
public struct EpochHistory: Hashable, Sendable {
    /// The entries, oldest first (strictly increasing epochs).
    public var entries: [EpochStart]

    /// Creates a history.
    public init(_ entries: [EpochStart]) {
        self.entries = entries
    }

    /// The epoch in which the chain's record at `seq` was written, if the history knows: the
    /// latest epoch that started at or before it.
    public func epoch(atSeq seq: UInt64) -> UInt64? {
        entries.last { e in e.firstSeq.map { $0 <= seq } ?? false }?.epoch
    }

    /// Whether a log ending at `last` may be a prefix of the chain's: it is empty, or the history
    /// does not know which epoch wrote seq `last.seq`, or it says `last.epoch` did. False means
    /// the log holds records the chain never committed (an old head's), to truncate.
    ///
    /// A record of an epoch whose first seq this history has not learned says the history is
    /// older than the record (a head writes only once its start is recorded): a heartbeat reply
    /// the master sent before that can arrive after the epoch's first writes. Unless a later
    /// epoch known to have started at or below it rules it out, the history cannot tell.
    public func holds(_ last: LSN) -> Bool {
        guard last != .zero, let chain = epoch(atSeq: last.seq) else { return true }
        if chain == last.epoch { return true }
        return chain < last.epoch && firstSeq(of: last.epoch) == nil
    }

    /// Whether a log ending at `last` is provably a prefix of the chain's — the stricter twin of
    /// ``holds(_:)``: it is empty, or its last record is the chain's record at that seq (same
    /// epoch; two logs that share an LSN share everything below it). Until the current epoch's
    /// first seq is recorded the history cannot tell (that epoch may start below `last`), so no.
    public func isPrefix(_ last: LSN) -> Bool {
        guard last != .zero else { return true }
        guard entries.last?.firstSeq != nil else { return false }
        return epoch(atSeq: last.seq) == last.epoch
    }

    /// The first seq of `epoch`, if recorded.
    public func firstSeq(of epoch: UInt64) -> UInt64? {
        entries.first { $0.epoch == epoch }?.firstSeq
    }

    /// The highest seq ≤ `myLastSeq` at which a log agrees with the chain, given `epochAt(seq)`
    /// — the epoch of that log's own record at `seq`. Everything after it must be truncated (an
    /// old head's writes that never committed). Conservative: where the history cannot tell, it
    /// answers lower, which costs a longer catch-up, never a wrong record. Seqs at or below
    /// `keeping` are known to be on every replica (the log's commit watermark): shared without
    /// asking — compaction may have dropped their records.
    public func lastShared(myLastSeq: UInt64, keeping: UInt64 = 0,
                           epochAt: (UInt64) async throws(CatenaError) -> UInt64) async throws(CatenaError) -> UInt64 {
        var step = SharedSearch.check(myLastSeq)
        while case .check(let seq) = step {
            step = search(at: seq, keeping: keeping, mine: seq == 0 || seq <= keeping ? nil : try await epochAt(seq))
        }
        guard case .found(let seq) = step else { return 0 }
        return seq
    }

    /// ``lastShared(myLastSeq:keeping:epochAt:)`` over a log read synchronously (the simulation's).
    public func lastShared<Failure: Error>(myLastSeq: UInt64, keeping: UInt64 = 0,
                                           epochAt: (UInt64) throws(Failure) -> UInt64) throws(Failure) -> UInt64 {
        var step = SharedSearch.check(myLastSeq)
        while case .check(let seq) = step {
            step = search(at: seq, keeping: keeping, mine: seq == 0 || seq <= keeping ? nil : try epochAt(seq))
        }
        guard case .found(let seq) = step else { return 0 }
        return seq
    }

    /// One step of the search for the last shared seq.
    private enum SharedSearch {
        /// The answer.
        case found(UInt64)
        /// Look at this seq next.
        case check(UInt64)
    }

    /// Where the search goes from `seq`, whose record in this log has epoch `mine` (nil: not
    /// read, because `seq` is 0 or at most `keeping`).
    private func search(at seq: UInt64, keeping: UInt64, mine: UInt64?) -> SharedSearch {
        if seq == 0 || seq <= keeping { return .found(seq) }
        guard let chain = epoch(atSeq: seq) else { return .found(0) }
        if mine == chain { return .found(seq) }
        // The chain's record at seq was written in another epoch: everything from that epoch's
        // first seq on differs (or cannot be proven equal) — look below it.
        return .check(firstSeq(of: chain)! - 1)
    }
}

/// What a node has seen of its chain — the highest configuration and the epoch history — as it
/// persists it, so that after a restart it still refuses a master whose state went back
/// (restored from an old backup): an older configuration, the same epoch with other members, or
/// a history that forgets where an epoch started.
public struct SeenChain: Hashable, Sendable {
    /// The highest configuration seen.
    public var configuration: ChainConfiguration
    /// The epoch history, with every first seq known.
    public var history: EpochHistory

    /// Creates a record of what was seen.
    public init(configuration: ChainConfiguration, history: EpochHistory) {
        self.configuration = configuration
        self.history = history
    }

    /// How many epochs' first seqs the history knows.
    public var knownStarts: Int { history.entries.count { $0.firstSeq != nil } }
}
