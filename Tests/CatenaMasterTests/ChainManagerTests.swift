import CatenaCluster
import CatenaCore
import CatenaMaster
import Testing

private let ms: UInt64 = 1_000_000

private func node(_ s: String) -> NodeID { try! NodeID(s) }
private func addressOf(_ s: String) -> String { "127.0.0.1:\(7000 + Int(s.dropFirst())!)" }
private func member(_ s: String) -> ChainMember { ChainMember(id: node(s), address: addressOf(s)) }

/// A state at `epoch` whose earlier epochs started at seq 100 × epoch.
private func state(_ ids: [String], epoch: UInt64 = 1, standbys: [String] = [], firstSeq: UInt64? = nil) -> MasterState {
    MasterState(
        configuration: try! ChainConfiguration(clusterID: "test", chainID: 1, epoch: epoch, members: ids.map(member)),
        epochHistory: (1...epoch).map { EpochStart(epoch: $0, firstSeq: $0 < epoch ? $0 * 100 : firstSeq) },
        standbys: standbys.map(member))
}

private func beat(_ id: String, seq: UInt64 = 0, address: String? = nil, start: EpochStart? = nil, epoch: UInt64 = 0) -> ChainManager.Beat {
    ChainManager.Beat(node: node(id), address: address ?? addressOf(id), highestLSN: LSN(epoch: 1, seq: seq), epochStart: start, epoch: epoch)
}

private func ids(_ members: [ChainMember]?) -> [String]? { members?.map(\.id.rawValue) }

private func manager(_ s: MasterState, now: UInt64 = 0, lease: Duration? = nil, lag: UInt64 = 256) -> ChainManager {
    ChainManager(state: s, settings: .init(failureTimeout: .seconds(1), lease: lease, catchUpLagRecords: lag), now: now)
}

extension ChainManager {
    /// Heartbeats from `nodes` at `now`, each at `seq`.
    fileprivate mutating func beats(_ nodes: [String], seq: UInt64 = 0, now: UInt64) throws(CatenaError) {
        for n in nodes { _ = try heartbeat(beat(n, seq: seq), now: now) }
    }

    /// Heartbeats from `nodes` every 100 ms from `from` through `through`.
    fileprivate mutating func beats(_ nodes: [String], seq: UInt64 = 0, from: UInt64, through: UInt64) throws(CatenaError) {
        for t in stride(from: from, through: through, by: Int(100 * ms)) { try beats(nodes, seq: seq, now: t) }
    }

    /// A heartbeat from `id` running `epoch`, its log at seq `seq` of epoch 1, at `t` ms.
    @discardableResult
    fileprivate mutating func heartbeat(_ id: String, seq: UInt64, epoch: UInt64, at t: UInt64, start: EpochStart? = nil) throws(CatenaError) -> Reply {
        try heartbeat(Beat(node: node(id), address: addressOf(id), highestLSN: LSN(epoch: 1, seq: seq), epochStart: start, epoch: epoch),
                  now: t * ms)
    }

    /// n1 and n2 at seq 100 in epoch 1, standby n3 80 records behind, at 100 ms.
    fileprivate mutating func beatsBeforeN3Joins() throws(CatenaError) {
        _ = try heartbeat("n1", seq: 100, epoch: 1, at: 100)
        _ = try heartbeat("n2", seq: 100, epoch: 1, at: 100)
        _ = try heartbeat("n3", seq: 20, epoch: 0, at: 100)
    }

    /// The master runs from `from` through `through` and nothing arrives: a tick every 100 ms.
    /// (Time jumping further without events would be the master's own pause.)
    fileprivate mutating func idle(from: UInt64, through: UInt64) {
        for t in stride(from: from, through: through, by: Int(100 * ms)) { tick(now: t) }
    }

    /// Proposes and persists at `now`; the persisted state, or nil if nothing was proposed.
    fileprivate mutating func persistNext(now: UInt64) -> MasterState? {
        guard let next = nextProposal(now: now) else { return nil }
        proposalPersisted(now: now)
        return next
    }
}

@Suite("Chain manager")
struct ChainManagerTests {
    @Test func repliesCarryTheActiveStateAndOnlyMembersGetLeases() throws {
        let s = state(["n1", "n2"], standbys: ["n3"])
        var m = manager(s)
        let r = try m.heartbeat(beat("n1", seq: 5), now: 10 * ms)
        #expect(r == ChainManager.Reply(configuration: s.configuration, history: s.epochHistory, standing: .member, lease: .seconds(1)))
        #expect(try m.heartbeat(beat("n3"), now: 10 * ms) == ChainManager.Reply(configuration: s.configuration, history: s.epochHistory, standing: .joining, lease: nil))
        #expect(try m.heartbeat(beat("n9"), now: 10 * ms) == ChainManager.Reply(configuration: s.configuration, history: s.epochHistory, standing: .unknown, lease: nil))
        // Nothing is kept about a node the master does not know.
        #expect(m.status(now: 10 * ms).map(\.id.rawValue) == ["n1", "n2", "n3"])
        #expect(m.nextProposal(now: 10 * ms) == nil)
    }

    @Test func theReplyAfterAPersistCarriesTheNewStateAndKeepsOnlyAMembersLease() throws {
        var m = manager(state(["n1", "n2"], standbys: ["n3"], firstSeq: 1))
        try m.beats(["n1", "n2"], seq: 10, now: 10 * ms)
        let granted = try m.heartbeat(beat("n3", seq: 10), now: 10 * ms).lease
        #expect(granted == nil)
        let appended = m.persistNext(now: 10 * ms)
        #expect(ids(appended?.configuration.members) == ["n1", "n2", "n3"])
        // n3 is a member now, but joined: no lease until it holds what n2 held.
        #expect(try m.reply(to: node("n3"), granted: .seconds(1)) ==
                ChainManager.Reply(configuration: appended!.configuration, history: appended!.epochHistory, standing: .member, lease: nil))
        #expect(try m.reply(to: node("n1"), granted: .seconds(1)).lease == .seconds(1))
        #expect(try m.reply(to: node("n1"), granted: nil).lease == nil, "no lease the heartbeat did not grant")
        #expect(try m.reply(to: node("n9"), granted: .seconds(1)).standing == .unknown)
    }

    @Test(arguments: [("n1", ["n2", "n3"], "n2"), ("n2", ["n1", "n3"], "n1"), ("n3", ["n1", "n2"], "n1")])
    func aFailedMemberIsDroppedFromTheChain(failed: String, rest: [String], head: String) throws {
        var m = manager(state(["n1", "n2", "n3"]))
        try m.beats(rest, from: 100 * ms, through: 1000 * ms)
        // Silent since the start, but not for longer than the timeout yet.
        #expect(m.nextProposal(now: 1000 * ms) == nil)
        #expect(m.status(now: 1000 * ms).first { $0.id == node(failed) }?.health == .suspect)
        let next = m.nextProposal(now: 1000 * ms + 1)
        #expect(ids(next?.configuration.members) == rest)
        #expect(next?.epoch == 2)
        #expect(next?.epochHistory == [EpochStart(epoch: 1), EpochStart(epoch: 2)])
        #expect(ids(next?.standbys) == [failed])
        #expect(next?.configuration.head?.id == node(head))
        #expect(next?.configuration.role(of: node(rest[1])) == .tail)
        #expect(m.proposal == next)
        // Persisted before announced: until the proposal is persisted, replies carry epoch 1.
        #expect(try m.heartbeat(beat(rest[0]), now: 1001 * ms).configuration.epoch == 1)
        m.proposalPersisted(now: 1002 * ms)
        #expect(m.state == next)
        #expect(m.proposal == nil)
        #expect(try m.heartbeat(beat(rest[0]), now: 1003 * ms).configuration == next?.configuration)
        // The failed member may come back: as a standby, without a lease.
        let back = try m.heartbeat(beat(failed), now: 1004 * ms)
        #expect(back.standing == .joining)
        #expect(back.lease == nil)
    }

    @Test func simultaneousFailuresAreOneReconfiguration() throws {
        var m = manager(state(["n1", "n2", "n3", "n4", "n5"]))
        try m.beats(["n1", "n3", "n5"], from: 100 * ms, through: 1100 * ms)
        let next = m.persistNext(now: 1100 * ms)
        #expect(ids(next?.configuration.members) == ["n1", "n3", "n5"])
        #expect(next?.epoch == 2)
        #expect(ids(next?.standbys) == ["n2", "n4"])
        #expect(m.nextProposal(now: 1100 * ms) == nil)
    }

    @Test func aRestartedMasterLeasesEveryMemberForOneLeaseFromItsStart() throws {
        var m = manager(state(["n1", "n2"]), now: 5000 * ms, lease: .milliseconds(600))
        #expect(m.status(now: 5000 * ms).map(\.leaseRemaining) == [600 * ms, 600 * ms])
        #expect(m.status(now: 5000 * ms).map(\.sinceHeartbeat) == [nil, nil])
        try m.beats(["n1"], from: 5100 * ms, through: 6000 * ms)
        #expect(m.nextProposal(now: 6000 * ms) == nil)
        #expect(ids(m.nextProposal(now: 6000 * ms + 1)?.configuration.members) == ["n1"])
    }

    @Test func aMasterOverALoadedStateGrantsNoLeaseForOneTimeoutSoAStaleStateIsFoundFirst() throws {
        // Restarted on master.json (epoch 3): for one failure timeout it grants no lease — the
        // members serve on what the previous master granted — and a node running a newer epoch
        // (the file was restored from an old backup) shows it stale before anyone serves from it.
        var m = ChainManager(state: state(["n1", "n2"], epoch: 3), settings: .init(failureTimeout: .seconds(1)), now: 0, loaded: true)
        #expect(try m.heartbeat(beat("n1", epoch: 3), now: 100 * ms).lease == nil)
        #expect(throws: CatenaError.self) { try m.heartbeat(beat("n2", epoch: 5), now: 200 * ms) }
        var fresh = ChainManager(state: state(["n1", "n2"], epoch: 3), settings: .init(failureTimeout: .seconds(1)), now: 0, loaded: true)
        #expect(try fresh.heartbeat(beat("n1", epoch: 3), now: 999 * ms).lease == nil)
        #expect(try fresh.heartbeat(beat("n1", epoch: 3), now: 1000 * ms).lease != nil)
        // A master that created its state (first start) grants at once.
        var created = ChainManager(state: state(["n1", "n2"], epoch: 1), settings: .init(failureTimeout: .seconds(1)), now: 0)
        #expect(try created.heartbeat(beat("n1", epoch: 1), now: 1 * ms).lease != nil)
    }

    @Test func aDrainedMemberIsRemovedOnlyOnceItsLeaseRanOutThenForgotten() throws {
        var m = manager(state(["n1", "n2", "n3"]), lease: .milliseconds(400))
        try m.beats(["n1", "n2", "n3"], now: 100 * ms)
        try m.removeNode(node("n3"), now: 150 * ms)
        // No more lease for it, though it is still a member.
        let r = try m.heartbeat(beat("n3"), now: 200 * ms)
        #expect(r.standing == .member)
        #expect(r.lease == nil)
        #expect(m.status(now: 200 * ms).last?.health == .leaving)
        #expect(m.status(now: 200 * ms).last?.leaseRemaining == 300 * ms)
        try m.beats(["n1", "n2"], from: 200 * ms, through: 400 * ms)
        #expect(m.nextProposal(now: 500 * ms - 1) == nil)
        let proposed = m.nextProposal(now: 500 * ms)
        let next = try #require(proposed)
        #expect(ids(next.configuration.members) == ["n1", "n2"])
        #expect(next.epoch == 2)
        #expect(next.standbys == [])
        // Still a member until the proposal is persisted.
        #expect(try m.heartbeat(beat("n3"), now: 510 * ms).standing == .member)
        m.proposalPersisted(now: 520 * ms)
        #expect(try m.heartbeat(beat("n3"), now: 530 * ms).standing == .unknown)
        #expect(m.status(now: 530 * ms).map(\.id.rawValue) == ["n1", "n2"])
    }

    @Test func aDrainedMemberThatSaysItHoldsNoLeaseLeavesWithoutWaitingForIt() throws {
        /// A heartbeat of n1's process 7, sent at `sent` (its clock).
        func n1(leaseless: Bool, sent: UInt64, process: UInt64 = 7) -> ChainManager.Beat {
            var b = beat("n1")
            (b.leaseless, b.sentAt, b.incarnation) = (leaseless, sent, process)
            return b
        }
        var m = manager(state(["n1", "n2", "n3"]))
        try m.beats(["n2", "n3"], now: 100 * ms)
        #expect(try m.heartbeat(n1(leaseless: false, sent: 90), now: 100 * ms).lease == .seconds(1))
        try m.removeNode(node("n1"), now: 150 * ms)
        // Its first heartbeat after the removal still holds the lease it was granted at 100 ms.
        #expect(try m.heartbeat(n1(leaseless: false, sent: 190), now: 200 * ms).lease == nil)
        try m.beats(["n2", "n3"], now: 200 * ms)
        #expect(m.nextProposal(now: 250 * ms) == nil, "its lease runs until 1100 ms")
        // The next says it holds none: it is removed at once, not at 1100 ms.
        #expect(try m.heartbeat(n1(leaseless: true, sent: 290), now: 300 * ms).lease == nil)
        #expect(ids(m.nextProposal(now: 300 * ms)?.configuration.members) == ["n2", "n3"])
        #expect(m.leasesReleased == 1)

        // A member that is not leaving and says it holds no lease (it lost it in a pause) is
        // granted one and stays.
        var k = manager(state(["n1", "n2", "n3"]))
        try k.beats(["n1", "n2", "n3"], now: 100 * ms)
        #expect(try k.heartbeat(n1(leaseless: true, sent: 150), now: 200 * ms).lease == .seconds(1))
        #expect(k.nextProposal(now: 300 * ms) == nil)

        // A heartbeat held up in the network: sent leaseless at 100, it arrives after one sent at
        // 200 that was granted a lease. The word is old news: the master waits for the lease.
        var late = manager(state(["n1", "n2", "n3"]))
        try late.beats(["n2", "n3"], now: 100 * ms)
        #expect(try late.heartbeat(n1(leaseless: true, sent: 200), now: 210 * ms).lease == .seconds(1))
        try late.removeNode(node("n1"), now: 220 * ms)
        _ = try late.heartbeat(n1(leaseless: true, sent: 100), now: 230 * ms)
        try late.beats(["n2", "n3"], now: 300 * ms)
        #expect(late.nextProposal(now: 300 * ms) == nil, "n1 may hold the lease granted at 210 ms")
        // Nor does the word of another process of the node (a restarted one, never granted here).
        _ = try late.heartbeat(n1(leaseless: true, sent: 500, process: 8), now: 310 * ms)
        #expect(late.nextProposal(now: 320 * ms) == nil)
        // Its own later word counts.
        _ = try late.heartbeat(n1(leaseless: true, sent: 300), now: 330 * ms)
        #expect(ids(late.nextProposal(now: 330 * ms)?.configuration.members) == ["n2", "n3"])
        #expect(late.leasesReleased == 1)
    }

    @Test func aMemberTheProposalInFlightRemovesGetsNoLease() throws {
        var m = manager(state(["n1", "n2", "n3"]))
        try m.beats(["n1", "n2"], from: 100 * ms, through: 1000 * ms)
        #expect(ids(m.nextProposal(now: 1001 * ms)?.configuration.members) == ["n1", "n2"])
        // It comes back while its removal is being persisted: a member still, but unleased.
        let r = try m.heartbeat(beat("n3"), now: 1002 * ms)
        #expect(r.standing == .member)
        #expect(r.lease == nil)
        // Operator requests while the removal is in flight do not give it a lease back.
        try m.addNode(node("n4"), address: addressOf("n4"))
        try m.removeNode(node("n4"), now: 1002 * ms)
        #expect(try m.heartbeat(beat("n3"), now: 1002 * ms).lease == nil)
        // The persist fails: it is a healthy member again, leased, and stays.
        m.proposalFailed()
        #expect(try m.heartbeat(beat("n3"), now: 1003 * ms).lease == .seconds(1))
        try m.beats(["n1", "n2"], now: 1003 * ms)
        #expect(m.nextProposal(now: 1004 * ms) == nil)

        // Same again, but the removal is persisted: it is a standby.
        try m.beats(["n1", "n2"], from: 1100 * ms, through: 2100 * ms)
        #expect(ids(m.nextProposal(now: 2004 * ms)?.configuration.members) == ["n1", "n2"])
        #expect(try m.heartbeat(beat("n3"), now: 2005 * ms).lease == nil)
        m.proposalPersisted(now: 2006 * ms)
        #expect(try m.heartbeat(beat("n3"), now: 2007 * ms) == ChainManager.Reply(
            configuration: m.state.configuration, history: m.state.epochHistory, standing: .joining, lease: nil))
    }

    @Test func aFailureDuringAProposalIsHandledByTheNextOne() throws {
        var m = manager(state(["n1", "n2", "n3"]))
        try m.beats(["n1", "n2", "n3"], now: 100 * ms)
        m.idle(from: 200 * ms, through: 800 * ms)
        _ = try m.heartbeat(beat("n2", address: "127.0.0.1:8002"), now: 900 * ms)
        let first = m.nextProposal(now: 900 * ms)
        #expect(first?.epoch == 2)
        for t in [1000 * ms, 1100 * ms, 1200 * ms] {
            _ = try m.heartbeat(beat("n1"), now: t)
            _ = try m.heartbeat(beat("n2", address: "127.0.0.1:8002"), now: t)
        }
        // n3 failed at 1100 ms, but one proposal is in flight.
        #expect(m.nextProposal(now: 1150 * ms) == nil)
        m.proposalPersisted(now: 1200 * ms)
        let second = m.nextProposal(now: 1200 * ms)
        #expect(second?.epoch == 3)
        #expect(second?.configuration.members == [member("n1"), ChainMember(id: node("n2"), address: "127.0.0.1:8002")])
        #expect(second?.epochHistory.map(\.epoch) == [1, 2, 3])
    }

    @Test func repliesNeverCarryAProposalEvenWhenItFails() throws {
        let s = state(["n1", "n2"])
        var m = manager(s)
        #expect(try m.heartbeat(beat("n2", address: "node2.example:9000"), now: 10 * ms).configuration == s.configuration)
        let next = m.nextProposal(now: 10 * ms)
        #expect(next?.configuration.members.last?.address == "node2.example:9000")
        #expect(next?.epoch == 2)
        #expect(m.nextProposal(now: 11 * ms) == nil)
        #expect(try m.heartbeat(beat("n1"), now: 12 * ms).configuration == s.configuration)
        m.proposalFailed()
        #expect(m.state == s)
        #expect(try m.heartbeat(beat("n1"), now: 13 * ms).configuration == s.configuration)
        #expect(m.nextProposal(now: 14 * ms) == next)
        m.proposalPersisted(now: 15 * ms)
        #expect(try m.heartbeat(beat("n1"), now: 16 * ms).configuration == next?.configuration)
        #expect(try m.heartbeat(beat("n1"), now: 16 * ms).history == next?.epochHistory)
    }

    @Test func whenEveryMemberFailsTheOneWithTheHighestLSNStays() throws {
        var m = manager(state(["n1", "n2", "n3"], firstSeq: 1))
        _ = try m.heartbeat(beat("n1", seq: 50), now: 100 * ms)
        _ = try m.heartbeat(beat("n2", seq: 50), now: 100 * ms)
        _ = try m.heartbeat(beat("n3", seq: 40), now: 100 * ms)
        m.idle(from: 200 * ms, through: 1100 * ms)
        #expect(m.isAvailable(now: 1100 * ms))
        #expect(!m.isAvailable(now: 1100 * ms + 1))
        // A tie between n1 and n2: the later in chain order stays.
        let next = m.persistNext(now: 1200 * ms)
        #expect(ids(next?.configuration.members) == ["n2"])
        #expect(ids(next?.standbys) == ["n1", "n3"])
        #expect(!m.isAvailable(now: 1200 * ms))
        #expect(m.status(now: 1200 * ms).map(\.health) == [.failed, .failed, .failed])
        // The last member is never removed.
        m.idle(from: 1300 * ms, through: 8900 * ms)
        #expect(m.nextProposal(now: 9000 * ms) == nil)
        // A standby cannot restore the chain: it only joins after a live tail.
        try m.beats(["n1", "n3"], seq: 50, from: 9000 * ms, through: 9500 * ms)
        #expect(m.nextProposal(now: 9500 * ms) == nil)
        #expect(!m.isAvailable(now: 9500 * ms))
        // The kept member comes back (and says where its epoch starts); one standby joins after it.
        _ = try m.heartbeat(beat("n2", seq: 50, start: EpochStart(epoch: 2, firstSeq: 51)), now: 9600 * ms)
        #expect(m.isAvailable(now: 9600 * ms))
        #expect(ids(m.persistNext(now: 9600 * ms)?.configuration.members) == ["n2", "n1"])
    }

    @Test func aLiveDrainedMemberStaysRatherThanNoMember() throws {
        var m = manager(state(["n1", "n2"]))
        try m.beats(["n1", "n2"], seq: 7, now: 100 * ms)
        try m.removeNode(node("n1"), now: 100 * ms)
        try m.beats(["n1"], seq: 7, from: 200 * ms, through: 1200 * ms)
        // n2 failed; n1 is drained and its lease ran out: it stays, no longer leaving.
        let next = m.persistNext(now: 1200 * ms)
        #expect(ids(next?.configuration.members) == ["n1"])
        #expect(ids(next?.standbys) == ["n2"])
        #expect(try m.heartbeat(beat("n1", seq: 7), now: 1300 * ms).lease == .seconds(1))
        #expect(m.status(now: 1300 * ms).first?.health == .healthy)
        // A drained member whose lease still runs, when the other fails: the drain is cancelled
        // at once, so the chain never consists only of members on their way out (unleased).
        var d = manager(state(["n1", "n2"]))
        try d.beats(["n1", "n2"], seq: 7, now: 100 * ms)
        try d.removeNode(node("n2"), now: 150 * ms)
        try d.beats(["n2"], seq: 7, from: 200 * ms, through: 1000 * ms)
        #expect(try d.heartbeat(beat("n2", seq: 7), now: 1000 * ms).lease == nil)
        let kept = d.persistNext(now: 1100 * ms + 1)
        #expect(ids(kept?.configuration.members) == ["n2"])
        #expect(ids(kept?.standbys) == ["n1"])
        #expect(try d.heartbeat(beat("n2", seq: 7), now: 1200 * ms).lease == .seconds(1))
        #expect(d.status(now: 1200 * ms).map(\.health) == [.healthy, .failed])
    }

    @Test func aSingleMemberChainNeverLosesItsMember() throws {
        var m = manager(state(["n1"]))
        m.idle(from: 100 * ms, through: 59_900 * ms)
        #expect(m.nextProposal(now: 60_000 * ms) == nil)
        #expect(!m.isAvailable(now: 60_000 * ms))
        #expect(ids(m.state.configuration.members) == ["n1"])
    }

    @Test func aCaughtUpStandbyJoinsAsTheNewTail() throws {
        var m = manager(state(["n1", "n2"], standbys: ["n3"], firstSeq: 1), lag: 10)
        try m.beats(["n1", "n2"], seq: 100, now: 100 * ms)
        _ = try m.heartbeat(beat("n3", seq: 89), now: 100 * ms)
        #expect(m.nextProposal(now: 100 * ms) == nil)
        #expect(m.status(now: 100 * ms).last?.lag == 11)
        #expect(m.status(now: 100 * ms).last?.health == .joining)
        _ = try m.heartbeat(beat("n3", seq: 90), now: 150 * ms)
        let next = m.nextProposal(now: 150 * ms)
        #expect(ids(next?.configuration.members) == ["n1", "n2", "n3"])
        #expect(next?.standbys == [])
        #expect(next?.epoch == 2)
        // Joining until the proposal is persisted; then a member, leased once it holds what n2
        // held when n2 knew it was no longer the tail.
        #expect(try m.heartbeat(beat("n3", seq: 95), now: 160 * ms).standing == .joining)
        m.proposalPersisted(now: 170 * ms)
        _ = try m.heartbeat(ChainManager.Beat(node: node("n2"), address: addressOf("n2"), highestLSN: LSN(epoch: 1, seq: 100), epoch: 2), now: 175 * ms)
        // A report sent before it ran the configuration that appended it (of its whole log,
        // durable or not) clears nothing.
        #expect(try m.heartbeat(beat("n3", seq: 100, epoch: 1), now: 180 * ms).lease == nil)
        let r = try m.heartbeat(beat("n3", seq: 100, epoch: 2), now: 190 * ms)
        #expect(r.standing == .member)
        #expect(r.lease == .seconds(1))
        #expect(r.configuration.role(of: node("n3")) == .tail)
    }

    @Test func aJoinedTailIsLeasedOnlyOnceItHoldsWhatItsPredecessorCommittedAsTail() throws {
        var m = manager(state(["n1", "n2"], standbys: ["n3"], firstSeq: 1), lag: 256)
        func beat(_ id: String, _ seq: UInt64, epoch: UInt64, at t: UInt64) throws -> ChainManager.Reply {
            try m.heartbeat(id, seq: seq, epoch: epoch, at: t)
        }
        try m.beatsBeforeN3Joins()
        // 80 records behind: appended, as the tail, but without a lease: it would serve stale reads.
        #expect(ids(m.persistNext(now: 100 * ms)?.configuration.members) == ["n1", "n2", "n3"])
        #expect(m.isCatchingUp(node("n3")))
        #expect(try beat("n3", 60, epoch: 2, at: 110).lease == nil)
        // n2 reports at epoch 1 (it does not know yet, and may still commit as tail): not enough.
        _ = try beat("n2", 110, epoch: 1, at: 120)
        #expect(try beat("n3", 110, epoch: 2, at: 130).lease == nil)
        // n2 runs epoch 2 and holds 115: n3 is leased once it holds 115 too.
        _ = try beat("n2", 115, epoch: 2, at: 140)
        #expect(try beat("n3", 114, epoch: 2, at: 150).lease == nil)
        #expect(try beat("n3", 115, epoch: 2, at: 160).lease == .seconds(1))
        #expect(!m.isCatchingUp(node("n3")))
        #expect(try beat("n2", 120, epoch: 2, at: 170).lease == .seconds(1))
    }

    @Test func aJoinedTailWaitsForItsNewPredecessorWhenTheOldOneIsRemoved() throws {
        var m = manager(state(["n1", "n2"], standbys: ["n3"], firstSeq: 1), lag: 256)
        func beat(_ id: String, _ seq: UInt64, epoch: UInt64, at t: UInt64) throws -> ChainManager.Reply {
            try m.heartbeat(id, seq: seq, epoch: epoch, at: t)
        }
        try m.beatsBeforeN3Joins()
        #expect(ids(m.persistNext(now: 100 * ms)?.configuration.members) == ["n1", "n2", "n3"])
        // n2 fails before it reported at epoch 2; n1 becomes n3's predecessor.
        for t in stride(from: 200, through: 1200, by: 100) {
            _ = try beat("n1", 100, epoch: 2, at: UInt64(t))
            _ = try beat("n3", 40, epoch: 2, at: UInt64(t))
        }
        #expect(ids(m.persistNext(now: 1200 * ms)?.configuration.members) == ["n1", "n3"])
        #expect(m.isCatchingUp(node("n3")))
        // n1's report at epoch 2 predates the change: it counts from epoch 3 on.
        _ = try beat("n1", 101, epoch: 2, at: 1250)
        #expect(try beat("n3", 101, epoch: 3, at: 1260).lease == nil)
        _ = try beat("n1", 104, epoch: 3, at: 1300)
        #expect(try beat("n3", 104, epoch: 3, at: 1310).lease == .seconds(1))
    }

    @Test func noJoinAfterASuspectOrDrainedTailOrFromAStaleStandby() throws {
        var m = manager(state(["n1", "n2"], standbys: ["n3"], firstSeq: 1), lag: 10)
        try m.beats(["n1", "n2"], seq: 100, now: 100 * ms)
        _ = try m.heartbeat(beat("n3", seq: 100), now: 100 * ms)
        // The tail has been silent for more than half the timeout.
        m.idle(from: 200 * ms, through: 600 * ms)
        try m.beats(["n1"], seq: 100, now: 650 * ms)
        _ = try m.heartbeat(beat("n3", seq: 100), now: 650 * ms)
        #expect(m.status(now: 650 * ms).map(\.health) == [.healthy, .suspect, .joining])
        #expect(m.nextProposal(now: 650 * ms) == nil)
        // The tail is back, but the standby's last heartbeat is older than the timeout.
        m.idle(from: 700 * ms, through: 1600 * ms)
        try m.beats(["n1", "n2"], seq: 100, now: 1700 * ms)
        #expect(m.status(now: 1700 * ms).last?.health == .failed)
        #expect(m.nextProposal(now: 1700 * ms) == nil)
        // Both fresh: it joins — unless the tail is being drained.
        try m.removeNode(node("n2"), now: 1700 * ms)
        _ = try m.heartbeat(beat("n3", seq: 100), now: 1700 * ms)
        #expect(m.nextProposal(now: 1700 * ms) == nil)
    }

    @Test func aStandbyHoldingWritesTheChainNeverCommittedJoinsOnlyOnceItTruncatedThem() throws {
        var m = manager(state(["n1", "n2", "n3"], firstSeq: 1), lag: 256)
        try m.beats(["n1", "n2", "n3"], seq: 40, now: 100 * ms)
        // The head fails with seqs 41...45 in its log that never reached n2.
        try m.beats(["n2", "n3"], seq: 40, from: 200 * ms, through: 1200 * ms)
        #expect(ids(m.persistNext(now: 1200 * ms)?.configuration.members) == ["n2", "n3"])
        func back(_ seq: UInt64, now: UInt64) throws {
            _ = try m.heartbeat(ChainManager.Beat(node: node("n1"), address: addressOf("n1"), highestLSN: LSN(epoch: 1, seq: seq)), now: now)
        }
        // Back at (1, 40) before the new head said where epoch 2 starts: the history cannot tell yet.
        try back(40, now: 1250 * ms)
        #expect(m.nextProposal(now: 1250 * ms) == nil)
        // It holds (1, 45) after all; epoch 2 starts at 41, and n2 and n3 write on.
        try back(45, now: 1260 * ms)
        _ = try m.heartbeat(beat("n2", seq: 40, start: EpochStart(epoch: 2, firstSeq: 41)), now: 1300 * ms)
        let recorded = m.persistNext(now: 1300 * ms)
        #expect(recorded?.epochHistory.last == EpochStart(epoch: 2, firstSeq: 41))
        #expect(ids(recorded?.configuration.members) == ["n2", "n3"])
        // Well within the lag, but its last record (1, 45) is not the chain's (2, 45).
        try m.beats(["n2", "n3"], seq: 60, now: 1400 * ms)
        try back(45, now: 1400 * ms)
        #expect(m.nextProposal(now: 1400 * ms) == nil)
        // Truncated to (1, 40), which the chain shares: it joins.
        try back(40, now: 1500 * ms)
        #expect(ids(m.persistNext(now: 1500 * ms)?.configuration.members) == ["n2", "n3", "n1"])
    }

    @Test func aStandbyAheadOfTheTailJoinsOnlyOnceTheTailHoldsAsMuch() throws {
        // n3 left the chain holding 41...45, which the head also holds and is still forwarding:
        // behind a tail at 40 it would hold records its predecessor lacks — which a member reads
        // as its own log having lost them.
        var m = manager(state(["n1", "n2"], standbys: ["n3"], firstSeq: 1), lag: 10)
        _ = try m.heartbeat(beat("n1", seq: 45), now: 100 * ms)
        _ = try m.heartbeat(beat("n2", seq: 40), now: 100 * ms)
        _ = try m.heartbeat(beat("n3", seq: 45), now: 100 * ms)
        #expect(m.nextProposal(now: 100 * ms) == nil)
        _ = try m.heartbeat(beat("n2", seq: 45), now: 150 * ms)
        #expect(ids(m.persistNext(now: 150 * ms)?.configuration.members) == ["n1", "n2", "n3"])
    }

    /// Seed 351899: n2, paused as a member, took its predecessor's last records when it resumed,
    /// after the chain had gone on without it; its heartbeat, still running epoch 1, said only
    /// what was durable (nothing). Behind a tail lacking those records it would have shown a
    /// successor holding more than its predecessor.
    @Test func aStandbysReportCountsForAJoinOnlyOnceItRunsTheStateInWhichItIsOne() throws {
        var m = manager(state(["n1", "n4"], epoch: 2, standbys: ["n2"], firstSeq: 104), lag: 10)
        _ = try m.heartbeat("n1", seq: 103, epoch: 2, at: 100)
        _ = try m.heartbeat("n4", seq: 100, epoch: 2, at: 100)
        _ = try m.heartbeat("n2", seq: 100, epoch: 1, at: 100)
        #expect(m.nextProposal(now: 100 * ms) == nil, "a member of epoch 1 may still be taking records")
        // Running epoch 2 it reports its whole log: ahead of the tail, it waits.
        _ = try m.heartbeat("n2", seq: 103, epoch: 2, at: 150)
        #expect(m.nextProposal(now: 150 * ms) == nil)
        _ = try m.heartbeat("n4", seq: 103, epoch: 2, at: 200)
        #expect(ids(m.persistNext(now: 200 * ms)?.configuration.members) == ["n1", "n4", "n2"])
    }

    @Test func severalCaughtUpStandbysJoinOnePerProposalMostAdvancedFirst() throws {
        var m = manager(state(["n1"], standbys: ["n2", "n3"], firstSeq: 1), lag: 10)
        _ = try m.heartbeat(beat("n1", seq: 100), now: 100 * ms)
        _ = try m.heartbeat(beat("n2", seq: 95), now: 100 * ms)
        _ = try m.heartbeat(beat("n3", seq: 99), now: 100 * ms)
        let first = m.persistNext(now: 100 * ms)
        #expect(ids(first?.configuration.members) == ["n1", "n3"])
        #expect(ids(first?.standbys) == ["n2"])
        // The head says where epoch 2 starts, running it; the new tail holds what the head held
        // then, so it is no longer catching up: the next may join behind it.
        try m.heartbeat("n1", seq: 100, epoch: 2, at: 150, start: EpochStart(epoch: 2, firstSeq: 101))
        try m.heartbeat("n3", seq: 100, epoch: 2, at: 150)
        #expect(!m.isCatchingUp(node("n3")))
        let second = m.persistNext(now: 150 * ms)
        #expect(ids(second?.configuration.members) == ["n1", "n3", "n2"])
        #expect(second?.epoch == 3)
        #expect(second?.epochHistory.map(\.epoch) == [1, 2, 3])
    }

    @Test func aFlappingMemberJustWithinTheTimeoutStaysAndOneThatMissesRejoinsOnlyCaughtUp() throws {
        var m = manager(state(["n1", "n2", "n3"], firstSeq: 1), lag: 10)
        var t: UInt64 = 0
        _ = try m.heartbeat(beat("n3", seq: 100), now: t)
        while t < 20_000 * ms {
            t += 100 * ms
            try m.beats(["n1", "n2"], seq: 100, now: t)
            // Checked just before its heartbeat, exactly one timeout after the previous one.
            #expect(m.nextProposal(now: t) == nil)
            if t % (1000 * ms) == 0 { _ = try m.heartbeat(beat("n3", seq: 100), now: t) }
        }
        // It misses one: removed, a standby.
        try m.beats(["n1", "n2"], seq: 100, from: t + 100 * ms, through: t + 1000 * ms)
        try m.beats(["n1", "n2"], seq: 100, now: t + 1001 * ms)
        #expect(ids(m.persistNext(now: t + 1001 * ms)?.standbys) == ["n3"])
        // Back, but behind (it lost its tail of the log): not appended until caught up.
        _ = try m.heartbeat(beat("n1", seq: 100, start: EpochStart(epoch: 2, firstSeq: 101)), now: t + 1050 * ms)
        #expect(m.persistNext(now: t + 1050 * ms)?.epochHistory.last == EpochStart(epoch: 2, firstSeq: 101))
        _ = try m.heartbeat(beat("n3", seq: 80), now: t + 1100 * ms)
        #expect(m.nextProposal(now: t + 1100 * ms) == nil)
        _ = try m.heartbeat(beat("n3", seq: 95), now: t + 1200 * ms)
        try m.beats(["n1", "n2"], seq: 100, now: t + 1200 * ms)
        #expect(ids(m.persistNext(now: t + 1200 * ms)?.configuration.members) == ["n1", "n2", "n3"])
    }

    @Test func addNodeMakesAStandbyThroughTheNextProposal() throws {
        var m = manager(state(["n1", "n2"]))
        for bad in ["nohost", "0.0.0.0:7004", "[::]:7004", "node4:0", "node4:70000", ""] {
            #expect(throws: CatenaError(.invalidArgument, "'\(bad)' is not an address peers can connect to (HOST:PORT, not a wildcard host, not port 0)")) {
                try m.addNode(node("n4"), address: bad)
            }
        }
        try m.addNode(node("n4"), address: "node4.example:7004")
        #expect(m.status(now: 0).last?.standing == .joining)
        // Known before it is persisted: it keeps running and catching up.
        #expect(try m.heartbeat(beat("n4", address: "node4.example:7004"), now: 10 * ms).standing == .joining)
        try m.addNode(node("n4"), address: "node4.example:7004")
        #expect(throws: CatenaError(.invalidArgument, "n4 is already known at node4.example:7004, not at node4.example:7005")) {
            try m.addNode(node("n4"), address: "node4.example:7005")
        }
        #expect(throws: CatenaError(.invalidArgument, "n1 is already known at 127.0.0.1:7001, not at 127.0.0.1:7009")) {
            try m.addNode(node("n1"), address: "127.0.0.1:7009")
        }
        try m.addNode(node("n1"), address: "127.0.0.1:7001")
        let next = m.persistNext(now: 20 * ms)
        #expect(next?.standbys == [ChainMember(id: node("n4"), address: "node4.example:7004")])
        #expect(next?.epoch == 1)
        #expect(next?.epochHistory == [EpochStart(epoch: 1)])
        // Adding it again changes nothing.
        try m.addNode(node("n4"), address: "node4.example:7004")
        #expect(m.nextProposal(now: 30 * ms) == nil)
    }

    @Test func removeNodeForgetsStandbysAndRefusesTheLastMember() throws {
        var m = manager(state(["n1", "n2"], standbys: ["n3"]))
        #expect(throws: CatenaError(.notFound, "n9 is neither a member nor a standby of chain 1")) {
            try m.removeNode(node("n9"), now: 0)
        }
        try m.removeNode(node("n3"), now: 0)
        #expect(throws: CatenaError(.invalidArgument, "n3 is being removed; add it again once it is gone")) {
            try m.addNode(node("n3"), address: addressOf("n3"))
        }
        let next = m.persistNext(now: 10 * ms)
        #expect(next?.standbys == [])
        #expect(next?.epoch == 1)
        #expect(try m.heartbeat(beat("n3"), now: 20 * ms).standing == .unknown)
        // Gone: it may be added again.
        try m.addNode(node("n3"), address: addressOf("n3"))

        try m.removeNode(node("n1"), now: 20 * ms)
        try m.removeNode(node("n1"), now: 20 * ms)
        #expect(throws: CatenaError(.invalidArgument, "n2 is the last member of chain 1: removing it would leave the chain without members")) {
            try m.removeNode(node("n2"), now: 20 * ms)
        }
        var single = manager(state(["n1"]))
        #expect(throws: CatenaError(.invalidArgument, "n1 is the last member of chain 1: removing it would leave the chain without members")) {
            try single.removeNode(node("n1"), now: 0)
        }
    }

    @Test func removeNodeRefusesToLeaveOnlyFailedMembersAndDropsAPendingAdd() throws {
        var m = manager(state(["n1", "n2", "n3"]))
        try m.beats(["n1"], from: 100 * ms, through: 1500 * ms)
        #expect(throws: CatenaError(.invalidArgument, "every other member of chain 1 has failed: removing n1 would leave the chain without a live member")) {
            try m.removeNode(node("n1"), now: 1500 * ms)
        }
        try m.removeNode(node("n2"), now: 1500 * ms)

        var n = manager(state(["n1"]))
        try n.addNode(node("n4"), address: addressOf("n4"))
        try n.removeNode(node("n4"), now: 0)
        #expect(n.nextProposal(now: 0) == nil)
        #expect(try n.heartbeat(beat("n4"), now: 0).standing == .unknown)
        // Removed while the proposal adding it is in flight: forgotten by the next one.
        try n.addNode(node("n4"), address: addressOf("n4"))
        #expect(ids(n.nextProposal(now: 10 * ms)?.standbys) == ["n4"])
        try n.removeNode(node("n4"), now: 10 * ms)
        n.proposalPersisted(now: 20 * ms)
        #expect(n.persistNext(now: 20 * ms)?.standbys == [])
    }

    @Test func theHeadsFirstSeqIsRecordedForTheCurrentEpochOnly() throws {
        let s = state(["n1", "n2"], epoch: 2) // history: epoch 1 from seq 100, epoch 2 unknown
        var m = manager(s)
        // Not the head; not the current epoch; no seq.
        _ = try m.heartbeat(beat("n2", start: EpochStart(epoch: 2, firstSeq: 150)), now: 10 * ms)
        _ = try m.heartbeat(beat("n1", start: EpochStart(epoch: 1, firstSeq: 150)), now: 10 * ms)
        _ = try m.heartbeat(beat("n1", start: EpochStart(epoch: 3, firstSeq: 150)), now: 10 * ms)
        _ = try m.heartbeat(beat("n1", start: EpochStart(epoch: 2, firstSeq: nil)), now: 10 * ms)
        #expect(m.nextProposal(now: 10 * ms) == nil)
        // The head's report: recorded in the same epoch, announced once persisted. Below epoch 1's
        // first seq (100) is allowed: a new head's log may end below what a replaced head wrote.
        let r = try m.heartbeat(beat("n1", start: EpochStart(epoch: 2, firstSeq: 100)), now: 20 * ms)
        #expect(r.history.last == EpochStart(epoch: 2))
        let next = m.nextProposal(now: 20 * ms)
        #expect(next?.epoch == 2)
        #expect(next?.configuration == s.configuration)
        #expect(next?.epochHistory == [EpochStart(epoch: 1, firstSeq: 100), EpochStart(epoch: 2, firstSeq: 100)])
        #expect(try m.heartbeat(beat("n1", start: EpochStart(epoch: 2, firstSeq: 100)), now: 30 * ms).history.last?.firstSeq == nil)
        m.proposalPersisted(now: 40 * ms)
        #expect(try m.heartbeat(beat("n1"), now: 50 * ms).history.last == EpochStart(epoch: 2, firstSeq: 100))
        // Recorded once: a later report changes nothing.
        _ = try m.heartbeat(beat("n1", start: EpochStart(epoch: 2, firstSeq: 170)), now: 60 * ms)
        #expect(m.nextProposal(now: 60 * ms) == nil)
    }

    @Test func aNewHeadMayStartItsEpochBelowWhereTheReplacedHeadStartedIts() throws {
        // Epoch 1 from 1; n1 started epoch 2 at 43 (its log ended at 42) and died before n2 got
        // 38...42. n2, head of epoch 3, continues from its own log's end.
        var s = state(["n2", "n3"], epoch: 3, standbys: ["n1"])
        s.epochHistory = [EpochStart(epoch: 1, firstSeq: 1), EpochStart(epoch: 2, firstSeq: 43), EpochStart(epoch: 3)]
        var m = manager(s)
        _ = try m.heartbeat(beat("n2", seq: 37, start: EpochStart(epoch: 3, firstSeq: 38)), now: 10 * ms)
        #expect(m.persistNext(now: 10 * ms)?.epochHistory.last == EpochStart(epoch: 3, firstSeq: 38))
    }

    @Test func aReportForAnEpochThatEndedBeforeItWasRecordedIsDropped() throws {
        var m = manager(state(["n1", "n2", "n3"]))
        try m.beats(["n1", "n2", "n3"], now: 100 * ms)
        _ = try m.heartbeat(beat("n3", address: "127.0.0.1:8003"), now: 200 * ms)
        #expect(m.nextProposal(now: 200 * ms)?.epoch == 2)
        _ = try m.heartbeat(beat("n1", start: EpochStart(epoch: 1, firstSeq: 1)), now: 210 * ms)
        m.proposalPersisted(now: 220 * ms)
        #expect(m.nextProposal(now: 230 * ms) == nil)
        #expect(m.state.epochHistory == [EpochStart(epoch: 1), EpochStart(epoch: 2)])
    }

    @Test func announcedAddressesAreRecordedMembersInANewEpochStandbysInTheSame() throws {
        var m = manager(state(["n1", "n2"], standbys: ["n3"]))
        _ = try m.heartbeat(beat("n3", address: "node3.example:7003"), now: 10 * ms)
        let standby = m.persistNext(now: 10 * ms)
        #expect(standby?.standbys == [ChainMember(id: node("n3"), address: "node3.example:7003")])
        #expect(standby?.epoch == 1)
        _ = try m.heartbeat(beat("n1", address: "[::1]:7101"), now: 20 * ms)
        let member = m.persistNext(now: 20 * ms)
        #expect(member?.configuration.members.first?.address == "[::1]:7101")
        #expect(member?.epoch == 2)
        #expect(member?.epochHistory == [EpochStart(epoch: 1), EpochStart(epoch: 2)])
        // Unconnectable: ignored, the old address stays; the heartbeat still counts.
        for bad in ["0.0.0.0:7001", "[::]:7001", "node1:0", "garbage"] {
            #expect(try m.heartbeat(beat("n1", address: bad), now: 900 * ms).lease == .seconds(1))
        }
        try m.beats(["n2"], now: 900 * ms)
        #expect(m.nextProposal(now: 1500 * ms) == nil)
        #expect(m.state.configuration.members.first?.address == "[::1]:7101")
    }

    @Test func statusReportsEveryKnownNode() throws {
        var m = manager(state(["n1", "n2", "n3"], standbys: ["n4"]), lease: .milliseconds(800))
        _ = try m.heartbeat(beat("n1", seq: 120), now: 100 * ms)
        _ = try m.heartbeat(beat("n2", seq: 110), now: 300 * ms)
        _ = try m.heartbeat(beat("n4", seq: 20), now: 300 * ms)
        try m.addNode(node("n5"), address: addressOf("n5"))
        m.idle(from: 400 * ms, through: 700 * ms)
        let s = m.status(now: 700 * ms)
        #expect(s.map(\.id.rawValue) == ["n1", "n2", "n3", "n4", "n5"])
        #expect(s.map(\.role) == [.head, .middle, .tail, nil, nil])
        #expect(s.map(\.standing) == [.member, .member, .member, .joining, .joining])
        #expect(s.map(\.health) == [.suspect, .healthy, .suspect, .joining, .failed])
        #expect(s.map(\.highestLSN) == [LSN(epoch: 1, seq: 120), LSN(epoch: 1, seq: 110), nil, LSN(epoch: 1, seq: 20), nil])
        #expect(s.map(\.lag) == [0, 10, nil, 100, nil])
        #expect(s.map(\.sinceHeartbeat) == [600 * ms, 400 * ms, nil, 400 * ms, nil])
        #expect(s.map(\.leaseRemaining) == [200 * ms, 400 * ms, 100 * ms, nil, nil])
        #expect(s[3].address == addressOf("n4"))
    }
}

@Suite("Chain manager: the master's own pauses")
struct ChainManagerPauseTests {
    /// n1, n2, n3 heartbeat every 100 ms through 1 s; then the master does not run for 3 s.
    private func pausedAfterOneSecond() throws -> ChainManager {
        var m = manager(state(["n1", "n2", "n3"]))
        try m.beats(["n1", "n2", "n3"], from: 100 * ms, through: 1000 * ms)
        return m
    }

    @Test func heartbeatsQueuedDuringAPauseAndHandledBeforeAnyTickRemoveNobody() throws {
        var m = try pausedAfterOneSecond()
        // Resumed at 4 s: the heartbeats queued meanwhile arrive one by one, each followed by the
        // proposal the master makes after every heartbeat.
        for (i, n) in ["n1", "n2", "n3"].enumerated() {
            let t = 4000 * ms + UInt64(i) * ms
            #expect(try m.heartbeat(beat(n), now: t).lease == .seconds(1))
            #expect(m.nextProposal(now: t) == nil, "\(n)'s heartbeat after the pause removed a member")
        }
        #expect(m.status(now: 4002 * ms).map(\.health) == [.healthy, .healthy, .healthy])
        #expect(m.state.epoch == 1)
    }

    @Test func theFirstTickAfterAPauseRemovesNobody() throws {
        var m = try pausedAfterOneSecond()
        #expect(m.lastPause == nil)
        #expect(m.nextProposal(now: 4000 * ms) == nil)
        #expect(m.lastPause == ChainManager.Pause(resumedAt: 4000 * ms, length: 3000 * ms))
        #expect(m.isAvailable(now: 4000 * ms))
        try m.beats(["n1", "n2", "n3"], from: 4010 * ms, through: 5010 * ms)
        #expect(m.nextProposal(now: 5010 * ms) == nil)
        #expect(m.state.epoch == 1)
    }

    @Test func aQueryBeforeTheFirstEventAfterAPauseSeesWhatThatEventWill() throws {
        let m = try pausedAfterOneSecond()
        let s = m.status(now: 4000 * ms)
        #expect(s.map(\.health) == [.healthy, .healthy, .healthy])
        #expect(s.map(\.leaseRemaining) == [1000 * ms, 1000 * ms, 1000 * ms])
        #expect(m.isAvailable(now: 4000 * ms))
    }

    @Test func aMemberThatDiedDuringThePauseIsRemovedOnceItHadATimeoutAndALeaseFromTheResume() throws {
        var m = try pausedAfterOneSecond()
        _ = try m.heartbeat(beat("n1"), now: 4000 * ms)
        // Every member is held leased for one lease from the resume, like after a restart.
        #expect(m.status(now: 4000 * ms).map(\.leaseRemaining) == [1000 * ms, 1000 * ms, 1000 * ms])
        try m.beats(["n1", "n2"], from: 4100 * ms, through: 5000 * ms)
        #expect(m.nextProposal(now: 5000 * ms) == nil)
        #expect(m.status(now: 5000 * ms).last?.health == .suspect)
        #expect(ids(m.nextProposal(now: 5000 * ms + 1)?.configuration.members) == ["n1", "n2"])
    }

    @Test func gapsUpToTheThresholdAreNoPauseAndFailuresAreDetectedOnTime() throws {
        var m = manager(state(["n1", "n2", "n3"]))
        try m.beats(["n1", "n2", "n3"], now: 100 * ms)
        // The threshold is a quarter of the timeout: ticks 250 ms apart are the master running.
        for t in stride(from: 350, through: 1100, by: 250) {
            try m.beats(["n1", "n2"], now: UInt64(t) * ms)
            #expect(m.nextProposal(now: UInt64(t) * ms) == nil)
        }
        #expect(m.lastPause == nil)
        #expect(ids(m.nextProposal(now: 1100 * ms + 1)?.configuration.members) == ["n1", "n2"])
    }

    @Test func aRemovalInFlightDuringAPauseIsPersistedAfterIt() throws {
        var m = manager(state(["n1", "n2", "n3"]))
        try m.beats(["n1", "n2"], from: 100 * ms, through: 1000 * ms)
        #expect(ids(m.nextProposal(now: 1000 * ms + 1)?.configuration.members) == ["n1", "n2"])
        // The master stops inside the compare-and-swap, which completes after the resume. The
        // member being removed got no lease since its removal was proposed: none to wait for.
        m.proposalPersisted(now: 4000 * ms)
        #expect(ids(m.state.configuration.members) == ["n1", "n2"])
        #expect(m.lastPause?.resumedAt == 4000 * ms)
        // The rest are not blamed for the pause.
        #expect(m.nextProposal(now: 4001 * ms) == nil)
        try m.beats(["n1", "n2"], from: 4100 * ms, through: 5100 * ms)
        #expect(m.nextProposal(now: 5100 * ms) == nil)
    }
}

@Suite("Chain manager: members reporting a failure")
struct ChainManagerReportedFailureTests {
    private static let fsync = CatenaError(.ioFailure, "fsync of 00000012.log failed: EIO")

    private func failing(_ id: String, seq: UInt64 = 0) -> ChainManager.Beat {
        ChainManager.Beat(node: node(id), address: addressOf(id), highestLSN: LSN(epoch: 1, seq: seq), failure: Self.fsync)
    }

    @Test func aMemberReportingAFailureGetsNoLeaseAndIsRemovedOnceItsLeaseRanOut() throws {
        var m = manager(state(["n1", "n2", "n3"], firstSeq: 1), lease: .milliseconds(800))
        try m.beats(["n1", "n2", "n3"], seq: 10, now: 100 * ms)
        // n2's log failed; it keeps heartbeating, and says so.
        let r = try m.heartbeat(failing("n2", seq: 10), now: 200 * ms)
        #expect(r.standing == .member)
        #expect(r.lease == nil)
        let report = m.status(now: 200 * ms)[1]
        #expect(report.health == .failed)
        #expect(report.failure == Self.fsync)
        #expect(report.leaseRemaining == 700 * ms, "the lease it got at 100 ms still runs")
        #expect(m.isAvailable(now: 200 * ms), "the others serve on")
        for t in stride(from: 300, through: 800, by: 100) {
            try m.beats(["n1", "n3"], seq: 10, now: UInt64(t) * ms)
            _ = try m.heartbeat(failing("n2", seq: 10), now: UInt64(t) * ms)
            #expect(m.nextProposal(now: UInt64(t) * ms) == nil)
        }
        #expect(m.nextProposal(now: 900 * ms - 1) == nil)
        let next = m.persistNext(now: 900 * ms)
        #expect(ids(next?.configuration.members) == ["n1", "n3"])
        #expect(ids(next?.standbys) == ["n2"])
    }

    @Test func aMemberWhoseLogLostRecordsIsNotKeptAsTheHolderOfEverything() throws {
        // n1's log lost records it had made durable (its data restored from an old backup): it
        // heartbeats, reporting a corruption failure, with a higher LSN than n2, which then falls
        // silent. When both must go, the one kept is n2 — it holds every committed write — and
        // not n1, whatever it reports; an I/O failure (the log intact) would keep n1.
        func run(_ failure: CatenaError) throws -> [String]? {
            var m = manager(state(["n1", "n2"], firstSeq: 1))
            try m.beats(["n2"], seq: 10, now: 100 * ms)
            for t in stride(from: 100, through: 2500, by: 100) {
                _ = try m.heartbeat(ChainManager.Beat(node: node("n1"), address: addressOf("n1"), highestLSN: LSN(epoch: 1, seq: 12),
                                                      failure: failure), now: UInt64(t) * ms)
                m.tick(now: UInt64(t) * ms)
            }
            return ids(m.persistNext(now: 2500 * ms)?.configuration.members)
        }
        #expect(try run(CatenaError(.corruption, "the successor holds records this log lacks")) == ["n2"])
        #expect(try run(CatenaError(.ioFailure, "fsync failed")) == ["n1"])
    }

    @Test func aStandbyReportingAFailureNeverJoinsUntilItStopsReportingIt() throws {
        var m = manager(state(["n1", "n2"], standbys: ["n3"], firstSeq: 1), lag: 10)
        try m.beats(["n1", "n2"], seq: 100, now: 100 * ms)
        _ = try m.heartbeat(failing("n3", seq: 100), now: 100 * ms)
        #expect(m.nextProposal(now: 100 * ms) == nil)
        #expect(m.status(now: 100 * ms).last?.health == .failed)
        #expect(m.status(now: 100 * ms).last?.failure == Self.fsync)
        // Restarted on a repaired disk: healthy again, it joins.
        _ = try m.heartbeat(beat("n3", seq: 100), now: 200 * ms)
        try m.beats(["n1", "n2"], seq: 100, now: 200 * ms)
        #expect(m.status(now: 200 * ms).last?.failure == nil)
        #expect(ids(m.persistNext(now: 200 * ms)?.configuration.members) == ["n1", "n2", "n3"])
    }

    @Test func noJoinBehindATailReportingAFailure() throws {
        var m = manager(state(["n1", "n2"], standbys: ["n3"], firstSeq: 1), lag: 10)
        try m.beats(["n1"], seq: 100, now: 100 * ms)
        _ = try m.heartbeat(failing("n2", seq: 100), now: 100 * ms)
        _ = try m.heartbeat(beat("n3", seq: 100), now: 100 * ms)
        #expect(m.nextProposal(now: 100 * ms) == nil)
    }

    @Test func theOnlyMemberReportingAFailureStaysAndTheChainIsUnavailable() throws {
        var m = manager(state(["n1"], firstSeq: 1))
        _ = try m.heartbeat(failing("n1", seq: 10), now: 100 * ms)
        #expect(!m.isAvailable(now: 100 * ms))
        m.idle(from: 200 * ms, through: 3000 * ms)
        for t in stride(from: 200, through: 3000, by: 100) { _ = try m.heartbeat(failing("n1", seq: 10), now: UInt64(t) * ms) }
        #expect(m.nextProposal(now: 3000 * ms) == nil)
        #expect(try m.heartbeat(failing("n1", seq: 10), now: 3000 * ms).lease == nil)
        // Healthy again: leased.
        #expect(try m.heartbeat(beat("n1", seq: 10), now: 3100 * ms).lease == .seconds(1))
        #expect(m.isAvailable(now: 3100 * ms))
    }
}

@Suite("Chain manager: members that may lack committed writes")
struct ChainManagerCatchingUpTests {
    /// n1 head, n2 tail at seq 100; n3, 80 behind, is appended at 400 ms while n2 has been silent
    /// since 100 ms (paused, just under half the timeout): it is still "healthy".
    private func n3JoinedBehindAPausedTail() throws -> ChainManager {
        var m = manager(state(["n1", "n2"], standbys: ["n3"], firstSeq: 1), lag: 256)
        try m.beatsBeforeN3Joins()
        for t in stride(from: 200, through: 400, by: 100) { try m.heartbeat("n1", seq: 100, epoch: 1, at: UInt64(t)) }
        try m.heartbeat("n3", seq: 20, epoch: 0, at: 400)
        #expect(m.status(now: 400 * ms).map(\.health) == [.healthy, .healthy, .joining])
        #expect(ids(m.persistNext(now: 400 * ms)?.configuration.members) == ["n1", "n2", "n3"])
        #expect(m.isCatchingUp(node("n3")))
        return m
    }

    @Test func theChainNeverShrinksToAJoinerStillCatchingUpWhenTheMembersHoldingEverythingFail() throws {
        var m = try n3JoinedBehindAPausedTail()
        // n1 dies and n2 stays paused; n3 runs on, stuck at 40: it lacks 41...100, which n2 committed.
        for t in stride(from: 500, through: 1500, by: 100) { try m.heartbeat("n3", seq: 40, epoch: 2, at: UInt64(t)) }
        // Both holders of every committed write failed: the most advanced of them (a tie: the
        // later in chain order) stays; the chain is unavailable until it is back.
        let next = m.persistNext(now: 1500 * ms)
        #expect(ids(next?.configuration.members) == ["n2", "n3"])
        #expect(ids(next?.standbys) == ["n1"])
        #expect(m.isCatchingUp(node("n3")))
        #expect(!m.isAvailable(now: 1500 * ms))
        #expect(m.unavailableReason(now: 1500 * ms) == "every member known to hold all committed writes (n2) has failed, and n3 may lack some (still catching up): the chain waits for n2 to come back")
        #expect(try m.heartbeat("n3", seq: 40, epoch: 3, at: 1600).lease == nil)
        for t in stride(from: 1700, through: 5000, by: 100) { try m.heartbeat("n3", seq: 40, epoch: 3, at: UInt64(t)) }
        #expect(m.nextProposal(now: 5000 * ms) == nil, "n2 is kept however long it is away")
        // n2 resumes at epoch 3 and reports what it holds; n3 copies it and is leased.
        _ = try m.heartbeat("n2", seq: 100, epoch: 3, at: 5100)
        #expect(m.isAvailable(now: 5100 * ms))
        #expect(try m.heartbeat("n3", seq: 100, epoch: 3, at: 5200).lease == .seconds(1))
        #expect(!m.isCatchingUp(node("n3")))
    }

    @Test func aLiveHolderOfEverythingStaysWhenTheOtherFails() throws {
        var m = try n3JoinedBehindAPausedTail()
        // n2 stays paused; n1 lives on. n3 waits for n1 instead (its predecessor once n2 is gone).
        for t in stride(from: 500, through: 1200, by: 100) {
            _ = try m.heartbeat("n1", seq: 100, epoch: 2, at: UInt64(t))
            _ = try m.heartbeat("n3", seq: 40, epoch: 2, at: UInt64(t))
        }
        #expect(ids(m.persistNext(now: 1200 * ms)?.configuration.members) == ["n1", "n3"])
        #expect(m.isAvailable(now: 1200 * ms))
        // Now n1 dies too: it is kept, not dropped for n3.
        for t in stride(from: 1300, through: 2300, by: 100) { _ = try m.heartbeat("n3", seq: 40, epoch: 3, at: UInt64(t)) }
        #expect(m.nextProposal(now: 2300 * ms) == nil)
        #expect(ids(m.state.configuration.members) == ["n1", "n3"])
        #expect(!m.isAvailable(now: 2300 * ms))
    }

    @Test func noJoinBehindATailThatIsItselfCatchingUp() throws {
        var m = manager(state(["n1", "n2"], standbys: ["n3", "n4"], firstSeq: 1), lag: 256)
        try m.beatsBeforeN3Joins()
        _ = try m.heartbeat("n4", seq: 10, epoch: 0, at: 100)
        #expect(ids(m.persistNext(now: 100 * ms)?.configuration.members) == ["n1", "n2", "n3"])
        _ = try m.heartbeat("n1", seq: 100, epoch: 1, at: 150, start: EpochStart(epoch: 2, firstSeq: 101))
        #expect(m.persistNext(now: 150 * ms)?.epochHistory.last == EpochStart(epoch: 2, firstSeq: 101))
        // n4 is within the lag of n3, which has not shown it holds what n2 held.
        _ = try m.heartbeat("n2", seq: 100, epoch: 1, at: 200)
        _ = try m.heartbeat("n3", seq: 60, epoch: 2, at: 200)
        _ = try m.heartbeat("n4", seq: 60, epoch: 0, at: 200)
        #expect(m.nextProposal(now: 200 * ms) == nil)
        // It has: n4 may join behind it.
        _ = try m.heartbeat("n2", seq: 100, epoch: 2, at: 300)
        _ = try m.heartbeat("n3", seq: 100, epoch: 2, at: 300)
        _ = try m.heartbeat("n4", seq: 100, epoch: 0, at: 300)
        #expect(!m.isCatchingUp(node("n3")))
        #expect(ids(m.persistNext(now: 300 * ms)?.configuration.members) == ["n1", "n2", "n3", "n4"])
    }

    @Test func whoMayLackCommittedWritesIsPersistedWithTheJoinAndClearedOnceCaughtUp() throws {
        var m = manager(state(["n1", "n2"], standbys: ["n3"], firstSeq: 1), lag: 256)
        try m.beatsBeforeN3Joins()
        let joined = m.persistNext(now: 100 * ms)
        #expect(joined?.catchingUp == [node("n3")])
        try m.heartbeat("n2", seq: 100, epoch: 2, at: 150)
        try m.heartbeat("n3", seq: 100, epoch: 2, at: 160)
        let cleared = m.persistNext(now: 160 * ms)
        #expect(cleared?.catchingUp == [])
        #expect(cleared?.epoch == 2, "recording it changes no configuration")
    }

    @Test func aRestartedMasterStillKeepsAHolderOfEverythingRatherThanAJoinerStillCatchingUp() throws {
        var s = state(["n1", "n2", "n3"], epoch: 2, firstSeq: 101)
        s.catchingUp = [node("n3")]
        var m = manager(s, now: 10_000 * ms)
        #expect(m.isCatchingUp(node("n3")))
        // n1 and n2 never come back; n3 does, still at 40.
        for t in stride(from: 10_100, through: 11_100, by: 100) { try m.heartbeat("n3", seq: 40, epoch: 2, at: UInt64(t)) }
        #expect(try m.heartbeat("n3", seq: 40, epoch: 2, at: 11_100).lease == nil)
        let next = m.persistNext(now: 11_100 * ms)
        #expect(ids(next?.configuration.members) == ["n2", "n3"])
        #expect(next?.catchingUp == [node("n3")])
        #expect(!m.isAvailable(now: 11_100 * ms))
    }

    @Test func aPredecessorThatLostDataSetsNoBarrier() throws {
        var m = manager(state(["n1", "n2"], standbys: ["n3"], firstSeq: 1), lag: 256)
        try m.beatsBeforeN3Joins()
        #expect(ids(m.persistNext(now: 100 * ms)?.configuration.members) == ["n1", "n2", "n3"])
        // n2 (which committed 1...100 as the tail) is restored from an old backup before it
        // reports at epoch 2: its log ends at 10, and n3, at 40, shows it lost data. What it
        // reports now bounds nothing n3 needs.
        let lost = ChainManager.Beat(node: node("n2"), address: addressOf("n2"), highestLSN: LSN(epoch: 1, seq: 10), epoch: 2,
                                     failure: CatenaError(.corruption, "the successor n3 holds records this log lacks (1.40 > 1.10)"))
        _ = try m.heartbeat(lost, now: 200 * ms)
        #expect(try m.heartbeat("n3", seq: 40, epoch: 2, at: 250).lease == nil)
        #expect(m.isCatchingUp(node("n3")))
        // n1, its predecessor once n2 is removed, still holds everything: n3 copies it and is leased.
        for t in stride(from: 300, through: 1300, by: 100) {
            _ = try m.heartbeat("n1", seq: 100, epoch: 2, at: UInt64(t))
            _ = try m.heartbeat("n3", seq: 40, epoch: 2, at: UInt64(t))
            _ = try m.heartbeat(lost, now: UInt64(t) * ms)
        }
        #expect(ids(m.persistNext(now: 1300 * ms)?.configuration.members) == ["n1", "n3"])
        _ = try m.heartbeat("n1", seq: 100, epoch: 3, at: 1400)
        #expect(try m.heartbeat("n3", seq: 90, epoch: 3, at: 1450).lease == nil)
        #expect(try m.heartbeat("n3", seq: 100, epoch: 3, at: 1500).lease == .seconds(1))
    }

    @Test func theLastMemberHoldingEverythingCannotBeDrained() throws {
        var m = manager(state(["n1"], standbys: ["n2"], firstSeq: 1), lag: 256)
        _ = try m.heartbeat("n1", seq: 100, epoch: 1, at: 100)
        _ = try m.heartbeat("n2", seq: 20, epoch: 0, at: 100)
        #expect(ids(m.persistNext(now: 100 * ms)?.configuration.members) == ["n1", "n2"])
        #expect(throws: CatenaError(.invalidArgument, "n1 is the only member of chain 1 known to hold every committed write (n2 is still catching up): removing it now could lose acknowledged writes; remove it once n2 caught up")) {
            try m.removeNode(node("n1"), now: 150 * ms)
        }
        _ = try m.heartbeat("n1", seq: 100, epoch: 2, at: 200)
        _ = try m.heartbeat("n2", seq: 100, epoch: 2, at: 250)
        try m.removeNode(node("n1"), now: 300 * ms)
    }
}

@Suite("Chain manager: a state older than the chain's")
struct ChainManagerStaleStateTests {
    private func beat(_ id: String, epoch: UInt64) -> ChainManager.Beat {
        ChainManager.Beat(node: node(id), address: addressOf(id), highestLSN: LSN(epoch: 1, seq: 10), epoch: epoch)
    }

    @Test func aNodeRunningANewerEpochMakesTheMasterRefuseEverything() throws {
        // master.json restored from a backup at epoch 3; the chain has moved on to epoch 7.
        var m = manager(state(["n1", "n2", "n3"], epoch: 3, firstSeq: 201))
        #expect(try m.heartbeat(beat("n1", epoch: 3), now: 10 * ms).lease == .seconds(1))
        #expect(m.staleness == nil)
        let expected = CatenaError(.staleEpoch, "the master's state (epoch 3) is older than the chain's: n2 runs epoch 7; it may have been restored from an old backup. The master hands out no configuration and changes nothing until it holds a state at least as new: put the latest master state in place (the master reloads it) or restart the master on it")
        #expect(throws: expected) { try m.heartbeat(beat("n2", epoch: 7), now: 20 * ms) }
        #expect(m.staleness == ChainManager.Staleness(epoch: 7, node: node("n2")))
        // From then on, every heartbeat is refused — even from a node at the state's epoch or below.
        #expect(throws: expected) { try m.heartbeat(beat("n1", epoch: 3), now: 30 * ms) }
        #expect(throws: expected) { try m.heartbeat(beat("n9", epoch: 0), now: 30 * ms) }
        #expect(throws: expected) { try m.addNode(node("n4"), address: addressOf("n4")) }
        #expect(throws: expected) { try m.removeNode(node("n3"), now: 30 * ms) }
        #expect(m.unavailableReason(now: 30 * ms) == expected.message)
        // Nothing is proposed, though every member looks silent.
        m.idle(from: 100 * ms, through: 5000 * ms)
        #expect(m.nextProposal(now: 5000 * ms) == nil)
        #expect(m.state.epoch == 3)
        // A node running a still newer epoch raises the bar.
        #expect(throws: CatenaError.self) { try m.heartbeat(beat("n3", epoch: 9), now: 5100 * ms) }
        #expect(m.staleness == ChainManager.Staleness(epoch: 9, node: node("n3")))
    }

    @Test func aMachineOverAStateOlderThanOneTheMasterActivatedIsStaleFromTheStart() throws {
        let behind = ChainManager(state: state(["n1", "n2"], epoch: 3), settings: .init(), now: 0,
                                  inUse: ChainManager.Staleness(epoch: 5, node: nil))
        #expect(behind.staleness?.epoch == 5)
        #expect(behind.unavailableReason(now: 0)?.hasPrefix("the master's state (epoch 3) is older than the chain's: this master had activated epoch 5 before it reloaded it") == true)
        var current = ChainManager(state: state(["n1", "n2"], epoch: 5), settings: .init(), now: 0,
                                   inUse: ChainManager.Staleness(epoch: 5, node: nil))
        #expect(current.staleness == nil)
        #expect(try current.heartbeat(beat("n1", epoch: 5), now: 10 * ms).standing == .member)
    }
}
