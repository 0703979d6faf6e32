import CatenaCore
import CatenaNetwork
import CatenaWire

/// The online scrub behind `catena chain verify`: compares the members of a chain key by key —
/// which keys each holds, and each key's LSN, size and content checksum — while the chain
/// serves, and finds every copy a member cannot read back intact.
///
/// It takes the chain's configuration from the master, then pages through every member's store
/// in key order, in lock-step (a `scrub` request per page and member: every member
/// answers for itself, reading each object from its disk and checking record and content
/// checksums, so damage in a value that nothing has read since it was written is found). Pages
/// are merged by key; a key on which the members disagree is asked of each member again, tail
/// first, after a short pause, ``Settings/rechecks`` times: the chain serves writes meanwhile,
/// and a predecessor legitimately holds a write its successors have not applied yet. Agreement
/// in any look clears the key; a disagreement that lasted through every look is reported if
/// the last two looks saw the same, and a key that was still changing (one written all the
/// time) is reported as unsettled, not as a difference. Each member's known damage
/// (`ScrubPage.damage`) is reported too.
///
/// The scrub is an audit of the replicas, not a read: members answer without the tail's lease
/// checks, and a member that stops answering ends the run with its error (nothing is judged on
/// partial data).
public struct ChainVerifier: Sendable {
    /// How the scrub pages and re-checks.
    public struct Settings: Sendable {
        /// Only keys starting with these bytes.
        public var prefix: [UInt8] = []
        /// Keys per page (a node takes at most 1,000).
        public var pageKeys: Int = 256
        /// Bytes of object data a node reads for one page, about (a node reads at most 64 MiB;
        /// a page holds at least one key, so a larger object is read alone).
        public var pageBytes: UInt64 = 16 << 20
        /// How often a key the members disagree on is asked of every member again before the
        /// disagreement is reported; 0: reported as the pages showed it.
        public var rechecks: Int = 3
        /// The pause before each re-check.
        public var recheckDelay: Duration = .milliseconds(250)
        /// How long one page may take (the node reads its objects whole within it).
        public var pageTimeout: Duration = .seconds(300)
        /// The most bytes of object data per second any one member reads for the scrub, on
        /// average since it started (the scrub pauses between pages to keep to it); nil: as fast
        /// as the pages come. Each member reads one page at a time on one of its reader threads
        /// either way.
        public var maxBytesPerSecond: UInt64?

        /// The defaults.
        public init() {}
    }

    /// The master to ask for the chain.
    public let admin: ChainAdmin
    /// How the scrub pages and re-checks.
    public var settings: Settings

    /// A verifier of the chain `admin`'s masters describe.
    public init(admin: ChainAdmin, settings: Settings = Settings()) {
        self.admin = admin
        self.settings = settings
    }

    /// Runs the scrub: calls `onDifference` for each difference as it is found (after its
    /// re-checks) and `onProgress` after each round of pages, and returns the report.
    ///
    /// Throws if the master or a member cannot be reached or stops answering (the error names
    /// the member); differences are not errors.
    public func run(onDifference: @Sendable (ScrubDifference) -> Void = { _ in },
                    onProgress: @Sendable (ScrubProgress) -> Void = { _ in }) async throws(CatenaError) -> ScrubReport {
        let start = ContinuousClock.now
        let chain = try await admin.configuration()
        guard !chain.members.isEmpty else {
            throw CatenaError(.unavailable, "chain \(chain.chainID) has no members at epoch \(chain.epoch)")
        }
        let members = try await MemberConnections.open(chain, timeout: admin.timeout)
        defer { members.close() }
        let ids = chain.members.map(\.id)
        var report = ScrubReport(chainID: chain.chainID, epoch: chain.epoch, members: ids)
        func found(_ difference: ScrubDifference) {
            report.differences.append(difference)
            onDifference(difference)
        }
        func progress() {
            onProgress(ScrubProgress(keysCompared: report.keysCompared, bytesRead: report.bytesRead.values.reduce(0, +),
                                     differences: report.differences.count, elapsed: .now - start))
        }

        var merge = ScrubMerge(members: ids.count)
        var cursors = [Key?](repeating: nil, count: ids.count)
        var unsettled: [Key] = []
        while true {
            let needed = merge.membersNeedingPages
            if !needed.isEmpty {
                let pages = try await fetch(needed.map { i in
                    (i, ScrubRequest(prefix: settings.prefix, after: cursors[i], limit: settings.pageKeys, maxBytes: settings.pageBytes))
                }, from: members)
                for (i, page) in pages {
                    if cursors[i] == nil {
                        for d in page.damage { found(ScrubDifference(kind: .damage, key: nil, node: ids[i], detail: d)) }
                    }
                    report.bytesRead[ids[i], default: 0] += page.bytesRead
                    // A cursor that does not move on would page forever.
                    if let next = page.nextCursor, let previous = cursors[i], next <= previous {
                        throw CatenaError(.protocolViolation, "\(ids[i]) answered a scrub page after \(previous) with cursor \(next)")
                    }
                    cursors[i] = page.nextCursor
                    merge.add(page, from: i)
                }
                progress()
                try await pace(report.bytesRead.values.max() ?? 0, since: start)
                continue
            }
            guard let (key, entries) = merge.next() else { break }
            report.keysCompared += 1
            guard !ScrubComparison.agree(entries) else { continue }
            switch try await recheck(key, seen: entries, members: members) {
            case .agreed:
                break
            case .stable(let entries):
                for d in ScrubComparison.differences(key: key, members: ids, entries: entries) { found(d) }
            case .unsettled:
                unsettled.append(key)
            }
        }
        // Keys that kept changing get one more chance, now that the pass is over.
        for key in unsettled {
            let entries = try await look(key, members: members)
            switch try await recheck(key, seen: entries, members: members) {
            case .agreed:
                break
            case .stable(let entries):
                for d in ScrubComparison.differences(key: key, members: ids, entries: entries) { found(d) }
            case .unsettled:
                report.unsettled.append(key)
            }
        }
        report.elapsed = .now - start
        report.epochAfter = (try? await admin.configuration().epoch) ?? chain.epoch
        progress()
        return report
    }

    /// Waits until `bytes` read since `start` keeps within ``Settings/maxBytesPerSecond``.
    private func pace(_ bytes: UInt64, since start: ContinuousClock.Instant) async throws(CatenaError) {
        guard let rate = settings.maxBytesPerSecond, rate > 0 else { return }
        let due = start + .nanoseconds(Int64(min(Double(bytes) / Double(rate) * 1e9, Double(Int64.max / 2))))
        guard due > .now else { return }
        do {
            try await Task.sleep(until: due, clock: .continuous)
        } catch {
            throw CatenaError(.cancelled, "the scrub was cancelled")
        }
    }

    /// How a disagreement ended after its re-checks.
    enum Recheck {
        case agreed
        case stable([ScrubEntry?])
        case unsettled
    }

    /// Asks every member about `key` again, ``Settings/rechecks`` times: agreement in any look
    /// ends it; a disagreement that lasts through every look counts if the last two looks (the
    /// page's included) saw the same, and is unsettled if they did not.
    private func recheck(_ key: Key, seen: [ScrubEntry?], members: MemberConnections) async throws(CatenaError) -> Recheck {
        var previous = seen
        var last = seen
        guard settings.rechecks > 0 else { return .stable(seen) }
        for _ in 0..<settings.rechecks {
            do {
                try await Task.sleep(for: settings.recheckDelay)
            } catch {
                throw CatenaError(.cancelled, "the scrub was cancelled")
            }
            let entries = try await look(key, members: members)
            if ScrubComparison.agree(entries) { return .agreed }
            previous = last
            last = entries
        }
        return last == previous ? .stable(last) : .unsettled
    }

    /// Every member's entry for `key` (nil: it does not hold it), asked tail first: a member's
    /// answer is then never older than its successor's, so a write on its way down the chain
    /// shows as a predecessor ahead, never behind.
    private func look(_ key: Key, members: MemberConnections) async throws(CatenaError) -> [ScrubEntry?] {
        var entries = [ScrubEntry?](repeating: nil, count: members.count)
        for i in (0..<members.count).reversed() {
            let page = try await members.page(i, ScrubRequest(prefix: key.bytes, after: nil, limit: 1, maxBytes: 1),
                                              timeout: settings.pageTimeout)
            entries[i] = page.entries.first { $0.key == key }
        }
        return entries
    }

    /// One page from each of `requests`' members, side by side.
    private func fetch(_ requests: [(Int, ScrubRequest)], from members: MemberConnections) async throws(CatenaError) -> [(Int, ScrubPage)] {
        let timeout = settings.pageTimeout
        let results = await withTaskGroup(of: (Int, Result<ScrubPage, CatenaError>).self) { group in
            for (i, request) in requests {
                // Not a `do throws(CatenaError)` that returns from both branches: built with
                // optimization, Swift 6.3 returned the first member's index from every task of
                // such a closure (seen as one member's page taken three times).
                group.addTask {
                    let page = await Result.catching { () async throws(CatenaError) in try await members.page(i, request, timeout: timeout) }
                    return (i, page)
                }
            }
            var out: [(Int, Result<ScrubPage, CatenaError>)] = []
            for await r in group { out.append(r) }
            return out
        }
        var pages: [(Int, ScrubPage)] = []
        for (i, result) in results.sorted(by: { $0.0 < $1.0 }) { pages.append((i, try result.get())) }
        return pages
    }
}

/// One connection per member of the chain being verified.
final class MemberConnections: Sendable {
    let chain: ChainConfiguration
    private let connections: [RequestConnection]

    private init(chain: ChainConfiguration, connections: [RequestConnection]) {
        self.chain = chain
        self.connections = connections
    }

    var count: Int { connections.count }

    /// Connects to every member of `chain` (as a client of its cluster).
    static func open(_ chain: ChainConfiguration, timeout: Duration) async throws(CatenaError) -> MemberConnections {
        var connections: [RequestConnection] = []
        for member in chain.members {
            do throws(CatenaError) {
                let address = try Address(parsing: member.address)
                let hello = Hello(role: .client, clusterID: chain.clusterID, senderID: "catena-verify")
                var limits = ConnectionLimits()
                limits.handshakeTimeout = min(limits.handshakeTimeout, timeout)
                connections.append(try await RequestConnection.connect(to: address, hello: hello, limits: limits))
            } catch {
                for c in connections { c.close() }
                throw CatenaError(error.code, "member \(member.id) at \(member.address): \(error.message)")
            }
        }
        return MemberConnections(chain: chain, connections: connections)
    }

    /// A scrub page from member `i`; its errors name the member.
    func page(_ i: Int, _ request: ScrubRequest, timeout: Duration) async throws(CatenaError) -> ScrubPage {
        let member = chain.members[i]
        do throws(CatenaError) {
            let reply = try await connections[i].request(Frame(type: .scrub, chainID: chain.chainID, epoch: chain.epoch,
                                                               payload: request.encoded()), timeout: timeout)
            guard reply.type == .scrubPage else {
                throw CatenaError(.protocolViolation, "answered a scrub with \(reply.type)")
            }
            return try ScrubPagePayload.decode(reply.payload)
        } catch {
            throw CatenaError(error.code, "member \(member.id) at \(member.address): \(error.message)")
        }
    }

    func close() {
        for c in connections { c.close() }
    }
}

/// Something a scrub found: a member whose copy of a key differs from the other members', or
/// cannot be read back intact, or damage in a member's log.
public struct ScrubDifference: Hashable, Sendable, CustomStringConvertible {
    /// What differs.
    public enum Kind: String, Hashable, Sendable, CaseIterable {
        /// The member lacks a key the others hold.
        case missing
        /// The member holds a key the others do not.
        case extra
        /// The member holds another version (LSN) of the key than the others.
        case version
        /// The member holds the same LSN with another size or content checksum: one LSN names
        /// two different records (DESIGN invariant 8).
        case content
        /// The member's copy cannot be read back intact (a checksum failed, a chunk is missing).
        case corrupt
        /// Damage the member found in its log (no key: the record's may be unknown).
        case damage
    }

    /// What differs.
    public var kind: Kind
    /// The key; nil for ``Kind/damage``.
    public var key: Key?
    /// The member whose copy differs.
    public var node: NodeID
    /// What was found, for humans: the versions each side holds, or the problem.
    public var detail: String

    /// Creates a difference.
    public init(kind: Kind, key: Key?, node: NodeID, detail: String) {
        self.kind = kind
        self.key = key
        self.node = node
        self.detail = detail
    }

    /// `KIND NODE KEY: DETAIL`.
    public var description: String {
        "\(kind.rawValue) \(node) \(key.map { "\($0)" } ?? "-"): \(detail)"
    }
}

/// How far a scrub has got.
public struct ScrubProgress: Hashable, Sendable {
    /// Keys compared across the members so far.
    public var keysCompared: Int
    /// Bytes of object data the members read so far, all together.
    public var bytesRead: UInt64
    /// Differences found so far.
    public var differences: Int
    /// Time since the scrub started.
    public var elapsed: Duration
}

/// What a scrub found.
public struct ScrubReport: Hashable, Sendable {
    /// The chain.
    public var chainID: ChainID
    /// The configuration's epoch when the scrub started.
    public var epoch: UInt64
    /// The members compared, head first.
    public var members: [NodeID]
    /// The configuration's epoch when the scrub ended (another than ``epoch``: the chain was
    /// reconfigured meanwhile).
    public var epochAfter: UInt64 = 0
    /// Keys compared.
    public var keysCompared: Int = 0
    /// Bytes of object data each member read.
    public var bytesRead: [NodeID: UInt64] = [:]
    /// The differences, in the order found.
    public var differences: [ScrubDifference] = []
    /// Keys on which the members disagreed in every look, differently each time (written all
    /// the time): not judged.
    public var unsettled: [Key] = []
    /// How long the scrub took.
    public var elapsed: Duration = .zero

    /// An empty report.
    public init(chainID: ChainID, epoch: UInt64, members: [NodeID]) {
        self.chainID = chainID
        self.epoch = epoch
        self.members = members
        self.epochAfter = epoch
    }
}

/// The pure rules of the comparison: whether the members agree on a key, and if not, who
/// differs and how.
enum ScrubComparison {
    /// What one member holds of a key, as compared.
    enum Observation: Hashable {
        case absent
        case version(lsn: LSN, size: UInt64, checksum: UInt64)
        case corrupt
    }

    static func observation(_ entry: ScrubEntry?) -> Observation {
        guard let entry else { return .absent }
        if entry.problem != nil { return .corrupt }
        return .version(lsn: entry.lsn, size: entry.size, checksum: entry.contentChecksum)
    }

    /// Whether every member holds the key intact, at the same LSN, size and checksum, or none
    /// holds it.
    static func agree(_ entries: [ScrubEntry?]) -> Bool {
        let seen = entries.map(observation)
        return !seen.contains(.corrupt) && Set(seen).count <= 1
    }

    /// The differences on `key`, one per member whose copy is not the reference: the
    /// observation most members share (a corrupt copy never is one; on a tie, the one nearest
    /// the tail, which holds what the chain committed), and every corrupt copy.
    static func differences(key: Key, members: [NodeID], entries: [ScrubEntry?]) -> [ScrubDifference] {
        let seen = entries.map(observation)
        var counts: [Observation: Int] = [:]
        for o in seen where o != .corrupt { counts[o, default: 0] += 1 }
        // The most common; ties go to the member nearest the tail.
        var reference: Observation?
        var best = 0
        for o in seen.reversed() where o != .corrupt {
            if counts[o]! > best {
                best = counts[o]!
                reference = o
            }
        }
        func holders(of o: Observation) -> String {
            members.indices.filter { seen[$0] == o }.map { "\(members[$0])" }.joined(separator: ", ")
        }
        func describe(_ o: Observation) -> String {
            guard case .version(let lsn, let size, let checksum) = o else { return "nothing" }
            return "LSN \(lsn), \(size) bytes, checksum \(checksum.hex16)"
        }
        var out: [ScrubDifference] = []
        for (i, o) in seen.enumerated() where o != reference {
            let node = members[i]
            let others = reference.map { holders(of: $0) } ?? ""
            switch (o, reference) {
            case (.corrupt, _):
                let e = entries[i]!
                out.append(ScrubDifference(kind: .corrupt, key: key, node: node,
                                           detail: "its copy (LSN \(e.lsn), \(e.size) bytes) cannot be read back intact: \(e.problem ?? "")"))
            case (.absent, .some(let r)):
                out.append(ScrubDifference(kind: .missing, key: key, node: node, detail: "lacks the key; \(others) hold \(describe(r))"))
            case (.version, .some(.absent)):
                out.append(ScrubDifference(kind: .extra, key: key, node: node, detail: "holds \(describe(o)); \(others) do not hold the key"))
            case (.version(let lsn, _, _), .some(.version(let refLSN, _, _))) where lsn != refLSN:
                out.append(ScrubDifference(kind: .version, key: key, node: node, detail: "holds \(describe(o)); \(others) hold \(describe(reference!))"))
            case (.version, .some(.version)):
                out.append(ScrubDifference(kind: .content, key: key, node: node,
                                           detail: "holds \(describe(o)); \(others) hold \(describe(reference!)): one LSN names two different records"))
            default:
                // No reference: every copy is corrupt (reported above), or this one is the reference.
                break
            }
        }
        return out
    }
}

/// The lock-step merge of the members' pages: hands out one key at a time with every member's
/// entry for it, and says which members need their next page first. Pure.
struct ScrubMerge {
    private var buffers: [[ScrubEntry]]
    private var positions: [Int]
    private var finished: [Bool]

    init(members: Int) {
        buffers = Array(repeating: [], count: members)
        positions = Array(repeating: 0, count: members)
        finished = Array(repeating: false, count: members)
    }

    /// Members whose entries are used up and who have more: a key can be judged only once
    /// every member's next key is known.
    var membersNeedingPages: [Int] {
        buffers.indices.filter { positions[$0] == buffers[$0].count && !finished[$0] }
    }

    /// Takes member `member`'s next page (the last one has no cursor).
    mutating func add(_ page: ScrubPage, from member: Int) {
        buffers[member] = page.entries
        positions[member] = 0
        finished[member] = page.nextCursor == nil
    }

    /// The smallest key any member holds next and each member's entry for it (nil: the member
    /// does not hold it); nil when a member needs a page first, or every member is done.
    mutating func next() -> (key: Key, entries: [ScrubEntry?])? {
        guard membersNeedingPages.isEmpty else { return nil }
        var smallest: Key?
        for i in buffers.indices where positions[i] < buffers[i].count {
            let key = buffers[i][positions[i]].key
            if smallest.map({ key < $0 }) ?? true { smallest = key }
        }
        guard let key = smallest else { return nil }
        var entries: [ScrubEntry?] = []
        for i in buffers.indices {
            if positions[i] < buffers[i].count, buffers[i][positions[i]].key == key {
                entries.append(buffers[i][positions[i]])
                positions[i] += 1
            } else {
                entries.append(nil)
            }
        }
        return (key, entries)
    }

    /// Whether every member's pages are all used up.
    var isDone: Bool {
        buffers.indices.allSatisfy { positions[$0] == buffers[$0].count && finished[$0] }
    }
}
