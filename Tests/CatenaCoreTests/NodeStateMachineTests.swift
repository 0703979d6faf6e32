import CatenaCore
import Testing

// Transcripts of the node state machine: events in, actions out. Each test names the rule it
// guards (docs/ARCHITECTURE.md, "Rejoin" and "Rejoining safely", and the node's gates).

private func node(_ s: String) -> NodeID { try! NodeID(s) }
private func member(_ s: String) -> ChainMember { ChainMember(id: node(s), address: "127.0.0.1:\(7000 + Int(s.utf8.last!))") }
private func chain(_ ids: [String], epoch: UInt64) -> ChainConfiguration {
    try! ChainConfiguration(clusterID: "test", chainID: 1, epoch: epoch, members: ids.map(member))
}
private func history(_ entries: (UInt64, UInt64?)...) -> EpochHistory {
    EpochHistory(entries.map { EpochStart(epoch: $0.0, firstSeq: $0.1) })
}
private func lsn(_ epoch: UInt64, _ seq: UInt64) -> LSN { LSN(epoch: epoch, seq: seq) }
private func request(_ n: UInt64, bytes: Int = 1) -> WriteRequest {
    WriteRequest(requestID: RequestID(high: 7, low: n), type: .put, key: try! Key("k\(n)"), value: Array(repeating: 1, count: bytes))
}
private let second: UInt64 = 1_000_000_000

private typealias Action = NodeStateMachine.Action

/// Drives one machine through a transcript and keeps what it needs to feed back.
private struct Transcript {
    var m: NodeStateMachine
    var now: UInt64 = 0
    var logEnd: LSN

    init(_ me: String, logEnd: LSN = .zero, recent: [ReplicaStateMachine.RememberedRequest] = [], seen: SeenChain? = nil,
         settings: NodeStateMachine.Settings = .init()) {
        m = NodeStateMachine(me: node(me), settings: settings, logEnd: logEnd, recentRequests: recent, seen: seen)
        self.logEnd = logEnd
    }

    /// A heartbeat reply; a newer configuration is persisted first (the persist completes here).
    mutating func reply(_ c: ChainConfiguration, _ standing: NodeStateMachine.Standing = .member,
                        lease: Duration? = .seconds(1), history h: EpochHistory) -> [Action] {
        let r = NodeStateMachine.Reply(configuration: c, standing: standing, lease: lease, history: h)
        var actions = m.heartbeatReplied(r, sentAt: now, logEnd: logEnd, now: now)
        if case .persistSeen(let p)? = actions.first, actions.count == 1 {
            actions = m.configurationPersisted(epoch: p.configuration.epoch, logEnd: logEnd, now: now)
        }
        if case .persistSeen(let p)? = actions.last {
            // A history that learned a first seq is persisted after it is adopted.
            _ = m.configurationPersisted(epoch: p.configuration.epoch, logEnd: logEnd, now: now)
            actions.removeLast()
        }
        return actions
    }

    mutating func write(_ r: WriteRequest) -> [Action] { m.write(r, now: now, wallClock: 1) }
}

private func has(_ actions: [Action], _ predicate: (Action) -> Bool) -> Bool { actions.contains(where: predicate) }
private func refusal(_ actions: [Action]) -> CatenaError.Code? {
    for case .replica(.refuse(_, let e)) in actions { return e.code }
    return nil
}
private func appended(_ actions: [Action]) -> [EncodedRecord] {
    actions.flatMap { if case .replica(.append(let r)) = $0 { return r } else { return [] } }
}
private func published(_ actions: [Action]) -> NodeStateMachine.View? {
    actions.reversed().lazy.compactMap { if case .publish(let v) = $0 { return v } else { return nil } }.first
}
private func notes(_ actions: [Action]) -> [String] {
    actions.compactMap { if case .note(let n) = $0 { return n.message } else { return nil } }
}

@Suite("Node state machine")
struct NodeStateMachineTests {
    // MARK: Configurations

    @Test func aNewConfigurationIsPersistedBeforeItIsAdopted() {
        var t = Transcript("a")
        let r = NodeStateMachine.Reply(configuration: chain(["a", "b"], epoch: 1), standing: .member, lease: .seconds(1), history: history((1, 1)))
        let first = t.m.heartbeatReplied(r, sentAt: 0, logEnd: .zero, now: 0)
        #expect(first == [.persistSeen(SeenChain(configuration: chain(["a", "b"], epoch: 1), history: history((1, 1))))])
        #expect(t.m.state == .unconfigured && t.m.configuration == nil)
        // A renewal while the persist runs changes nothing; the persist adopts the latest reply.
        #expect(t.m.heartbeatReplied(r, sentAt: 10, logEnd: .zero, now: 10).isEmpty)
        let adopted = t.m.configurationPersisted(epoch: 1, logEnd: .zero, now: 20)
        #expect(t.m.state == .member && t.m.highestSeen == chain(["a", "b"], epoch: 1))
        #expect(has(adopted) { $0 == .connectSuccessor(member("b")) })
        #expect(published(adopted)?.role == .head)
        #expect(published(adopted)?.leaseExpiry == 10 + 950_000_000, "lease counted from the later heartbeat's send time, less 5%")
    }

    @Test func anOlderConfigurationOrTheSameEpochWithOtherMembersIsRefused() {
        var t = Transcript("b", seen: SeenChain(configuration: chain(["a", "b"], epoch: 5), history: history((5, 1))))
        let old = t.m.heartbeatReplied(.init(configuration: chain(["a", "b", "c"], epoch: 4), standing: .member, lease: .seconds(1), history: history((4, 1))),
                                       sentAt: 0, logEnd: .zero, now: 0)
        #expect(old.count == 1 && notes(old).first?.contains("has seen epoch 5") == true)
        let forked = t.m.heartbeatReplied(.init(configuration: chain(["b", "a"], epoch: 5), standing: .member, lease: .seconds(1), history: history((5, 1))),
                                          sentAt: 0, logEnd: .zero, now: 0)
        #expect(notes(forked).first?.contains("other members") == true)
        #expect(t.m.configuration == nil && t.m.counters.staleConfigurationsRefused == 2)
        // The configuration it has seen is taken without another persist.
        let same = t.m.heartbeatReplied(.init(configuration: chain(["a", "b"], epoch: 5), standing: .member, lease: .seconds(1), history: history((5, 1))),
                                        sentAt: 0, logEnd: .zero, now: 0)
        #expect(!has(same) { if case .persistSeen = $0 { true } else { false } })
        #expect(t.m.state == .member)
    }

    @Test func aHistoryThatForgetsWhereAnEpochStartedIsRefusedAlsoAfterARestart() {
        // Running: it learned that epoch 2 starts at 7 (persisted after adopting it).
        var t = Transcript("b")
        _ = t.reply(chain(["a", "b"], epoch: 2), history: history((1, 1), (2, nil)))
        let learned = NodeStateMachine.Reply(configuration: chain(["a", "b"], epoch: 2), standing: .member, lease: .seconds(1),
                                             history: history((1, 1), (2, 7)))
        let adopted = t.m.heartbeatReplied(learned, sentAt: 0, logEnd: .zero, now: 0)
        #expect(adopted.last == .persistSeen(SeenChain(configuration: chain(["a", "b"], epoch: 2), history: history((1, 1), (2, 7)))))
        // A master restored from a backup taken before that start was recorded, now at a newer
        // epoch: adopting its history would make members truncate committed writes.
        let forked = NodeStateMachine.Reply(configuration: chain(["a", "b"], epoch: 3), standing: .member, lease: .seconds(1),
                                            history: history((1, 1), (2, nil), (3, 1)))
        let refused = t.m.heartbeatReplied(forked, sentAt: 0, logEnd: .zero, now: 0)
        #expect(notes(refused).first?.contains("epoch 2 starts at an unknown seq, this node knows it starts at 7") == true)
        #expect(t.m.epoch == 2)
        // After a restart the persisted history says the same.
        var r = Transcript("b", seen: SeenChain(configuration: chain(["a", "b"], epoch: 2), history: history((1, 1), (2, 7))))
        #expect(notes(r.m.heartbeatReplied(forked, sentAt: 0, logEnd: .zero, now: 0)).count == 1)
        #expect(r.m.configuration == nil && r.m.heartbeatEpoch == 2, "it names the epoch it has seen to the master")
    }

    // MARK: The head's gates

    @Test func aHeadWritesOnlyWithItsSuccessorsPositionItsEpochStartAndALease() {
        var t = Transcript("a", logEnd: lsn(1, 5))
        _ = t.reply(chain(["a", "b"], epoch: 2), history: history((1, 1), (2, nil)))
        // Its successor has not reported its position: no write, and no epoch start reported
        // yet (its log might lack records the successor holds).
        #expect(t.m.epochStartToReport == nil)
        #expect(refusal(t.write(request(1))) == .unavailable)
        let reported = t.m.successorReported(lsn(1, 3), epoch: 2, from: node("b"))
        #expect(reported.first == .clearSuccessorQueue)
        #expect(has(reported) { $0 == .replica(.resend(after: lsn(1, 3), through: lsn(1, 5), to: member("b"))) })
        // Its epoch start is unknown: it reports one, takes no write.
        #expect(t.m.epochStartToReport == EpochStart(epoch: 2, firstSeq: 6))
        #expect(refusal(t.write(request(1))) == .unavailable)
        _ = t.reply(chain(["a", "b"], epoch: 2), history: history((1, 1), (2, 6)))
        #expect(t.m.epochStartToReport == nil)
        #expect(appended(t.write(request(1))).map(\.lsn) == [lsn(2, 6)])
        // Past its lease (0 + 950 ms): no write.
        t.now = 951_000_000
        #expect(refusal(t.write(request(2))) == .unavailable)
    }

    @Test func aNodeThatSaidItHoldsNoLeaseTakesNoneFromRepliesToEarlierHeartbeats() {
        var t = Transcript("a", logEnd: lsn(1, 5))
        _ = t.reply(chain(["a", "b"], epoch: 2), history: history((1, 1), (2, nil)))
        _ = t.m.successorReported(lsn(1, 5), epoch: 2, from: node("b"))
        _ = t.reply(chain(["a", "b"], epoch: 2), history: history((1, 1), (2, 6)))
        #expect(appended(t.write(request(1))).map(\.lsn) == [lsn(2, 6)])
        let leased = t.m.reportLeaseless(sentAt: 10)
        #expect(!leased, "it holds a lease")
        // The master is removing it: its reply grants no lease, and it takes no writes.
        t.now = 100
        _ = t.reply(chain(["a", "b"], epoch: 2), lease: nil, history: history((1, 1), (2, 6)))
        #expect(refusal(t.write(request(2))) == .unavailable)
        // Its next heartbeat says so; a late reply to a heartbeat sent before it grants nothing.
        let leaseless = t.m.reportLeaseless(sentAt: 200)
        #expect(leaseless)
        let grant = NodeStateMachine.Reply(configuration: chain(["a", "b"], epoch: 2), standing: .member, lease: .seconds(1),
                                           history: history((1, 1), (2, 6)))
        let late = t.m.heartbeatReplied(grant, sentAt: 150, logEnd: lsn(2, 6), now: 250)
        #expect(published(late)?.leaseExpiry == nil)
        t.now = 250
        #expect(refusal(t.write(request(3))) == .unavailable)
        // A reply to that heartbeat or a later one may grant one again (the removal was cancelled).
        let renewed = t.m.heartbeatReplied(grant, sentAt: 200, logEnd: lsn(2, 6), now: 260)
        #expect(published(renewed)?.leaseExpiry == 200 + 950_000_000)
        #expect(appended(t.write(request(3))).map(\.lsn) == [lsn(2, 7)])
    }

    @Test func aHeadReportsItsEpochStartOnlyOverADurableLogAndStopsIfItsLogEndsBelowIt() throws {
        var t = Transcript("a", logEnd: lsn(1, 5))
        _ = t.reply(chain(["a", "b"], epoch: 1), history: history((1, 1)))
        _ = t.m.successorReported(lsn(1, 5), epoch: 1, from: node("b"))
        #expect(appended(t.write(request(1))).count == 1)
        // Made head of epoch 2 with seq 6 not yet durable: no start reported until it is.
        _ = t.reply(chain(["a"], epoch: 2), history: history((1, 1), (2, nil)))
        #expect(t.m.epochStartToReport == nil)
        _ = t.m.durable(through: lsn(1, 6))
        #expect(t.m.epochStartToReport == EpochStart(epoch: 2, firstSeq: 7))
        // Restarted over a log that lost seq 6 (a failed fsync's page cache, distrusted at open),
        // while the master recorded epoch 2 starting at 7: it must not write seq 6 in epoch 2.
        var r = Transcript("a", logEnd: lsn(1, 5))
        let stopped = r.reply(chain(["a"], epoch: 2), history: history((1, 1), (2, 7)))
        #expect(r.m.failure?.code == .corruption)
        #expect(try #require(published(stopped)).failure != nil)
        #expect(refusal(r.write(request(2))) == .unavailable)
    }

    @Test func aSuccessorAheadOfThisLogStopsTheHead() {
        var t = Transcript("a", logEnd: lsn(1, 5))
        _ = t.reply(chain(["a", "b"], epoch: 1), history: history((1, 1)))
        let reported = t.m.successorReported(lsn(1, 9), epoch: 1, from: node("b"))
        #expect(refusal(reported) == .lsnOutOfOrder)
        // Its log lost records it had made durable: it stops (no LSN handed out again), and its
        // heartbeats say so, so the master replaces it.
        #expect(t.m.failure?.code == .corruption && t.m.failure?.message.contains("holds records this log lacks") == true)
        #expect(refusal(t.write(request(1))) == .unavailable && !t.m.successorPositionKnown)
    }

    @Test func theHeadThrottlesPastTheUncommittedBoundAndWakesWritersOnCommit() {
        var settings = NodeStateMachine.Settings()
        settings.maxUncommittedBytes = 3_000
        var t = Transcript("a", settings: settings)
        _ = t.reply(chain(["a", "b"], epoch: 1), history: history((1, 1)))
        _ = t.m.successorReported(.zero, epoch: 1, from: node("b"))
        #expect(appended(t.write(request(1, bytes: 1_000))).count == 1)
        #expect(appended(t.write(request(2, bytes: 1_000))).count == 1)
        #expect(t.write(request(3, bytes: 1_000)) == [.throttled])
        _ = t.m.durable(through: lsn(1, 2))
        let committed = t.m.acknowledged(through: lsn(1, 1), epoch: 1, from: node("b"))
        #expect(has(committed) { $0 == .wakeThrottled })
        #expect(appended(t.write(request(3, bytes: 1_000))).count == 1)
        #expect(t.m.counters.writesThrottled == 1)
    }

    // MARK: Reads

    @Test func onlyALeasedTailThatHoldsItsReadTargetAnswersReads() throws {
        var t = Transcript("c", logEnd: lsn(1, 4))
        let adopted = t.reply(chain(["a", "c"], epoch: 2), history: history((1, 1), (2, 9)))
        let view = try #require(published(adopted))
        // A node with a predecessor reads nothing until it holds what the predecessor held.
        #expect(view.readsBlocked)
        #expect(throws: CatenaError.self) { try view.checkReads(at: 0, me: node("c")) }
        #expect(t.m.readTarget(lsn(1, 6), from: node("a")).isEmpty)
        _ = t.m.replicate([try Record(type: .put, chainID: 1, key: Key("x"), lsn: lsn(1, 5), value: [1]).encoded(),
                           try Record(type: .put, chainID: 1, key: Key("y"), lsn: lsn(1, 6), value: [1]).encoded()],
                          epoch: 2, from: node("a"))
        let unblocked = t.m.durable(through: lsn(1, 6))
        let open = try #require(published(unblocked))
        #expect(!open.readsBlocked)
        try open.checkReads(at: 900_000_000, me: node("c"))
        // Its lease (950 ms) runs out: no reads, before or after the store is read.
        #expect(throws: CatenaError.self) { try open.checkReads(at: 950_000_000, me: node("c")) }
        #expect(throws: CatenaError.self) { try open.checkLease(at: 960_000_000, me: node("c")) }
        // A head redirects reads to the tail.
        var h = Transcript("a")
        let head = try #require(published(h.reply(chain(["a", "c"], epoch: 2), history: history((2, 1)))))
        #expect { try head.checkReads(at: 0, me: node("a")) } throws: { ($0 as? CatenaError)?.code == .redirect }
    }

    @Test func everyLeasedMemberAnswersLinearizableReadsAndAsksTheTailAboutDirtyKeys() throws {
        // b, the middle of a → b → c, holds records 1...6 of epoch 2.
        var t = Transcript("b")
        let adopted = t.reply(chain(["a", "b", "c"], epoch: 2), history: history((2, 1)))
        #expect(try #require(published(adopted)).readsBlocked)
        let records = try (1...6).map { try Record(type: .put, chainID: 1, key: Key("k\($0)"), lsn: lsn(2, $0), value: [1]).encoded() }
        _ = t.m.replicate(records, epoch: 2, from: node("a"))
        _ = t.m.readTarget(lsn(2, 6), from: node("a"))
        let view = try #require(published(t.m.durable(through: lsn(2, 6))))
        // A linearizable read may be answered here; one for the tail only is redirected there.
        try view.checkReads(.linearizable, at: 0, me: node("b"))
        try view.checkReads(.any, at: 0, me: node("b"))
        #expect { try view.checkReads(.tail, at: 0, me: node("b")) } throws: { ($0 as? CatenaError)?.code == .redirect }
        // Nothing acknowledged yet: every version here may be uncommitted, so the tail is asked.
        #expect(t.m.commitWatermark == .zero)
        #expect(view.committedVersionSource(mode: .linearizable, version: lsn(2, 3), committed: t.m.commitWatermark) == member("c"))
        // c acknowledges through 4: versions through 4 are clean, later ones dirty.
        _ = t.m.acknowledged(through: lsn(2, 4), epoch: 2, from: node("c"))
        #expect(t.m.commitWatermark == lsn(2, 4))
        #expect(view.committedVersionSource(mode: .linearizable, version: lsn(2, 4), committed: t.m.commitWatermark) == nil)
        #expect(view.committedVersionSource(mode: .linearizable, version: lsn(2, 5), committed: t.m.commitWatermark) == member("c"))
        // A key with no version here has nothing uncommitted either; mode any takes what is here.
        #expect(view.committedVersionSource(mode: .linearizable, version: nil, committed: .zero) == nil)
        #expect(view.committedVersionSource(mode: .any, version: lsn(2, 6), committed: .zero) == nil)
        // The tail's durable versions are all committed: it never asks.
        var tail = Transcript("c")
        let tailView = try #require(published(tail.reply(chain(["a", "c"], epoch: 2), history: history((2, 1)))))
        #expect(tailView.committedVersionSource(mode: .linearizable, version: lsn(2, 9), committed: .zero) == nil)
        #expect(tailView.committedVersionSource(mode: .tail, version: lsn(2, 9), committed: .zero) == nil)
        // No lease, no reads in any mode; a failed node serves none either.
        #expect(throws: CatenaError.self) { try view.checkReads(.linearizable, at: 950_000_000, me: node("b")) }
        #expect(throws: CatenaError.self) { try view.checkReads(.any, at: 950_000_000, me: node("b")) }
        let failed = try #require(published(t.m.logFailed(CatenaError(.ioFailure, "disk"))))
        #expect { try failed.checkReads(.linearizable, at: 0, me: node("b")) } throws: { ($0 as? CatenaError)?.code == .unavailable }
        // A node outside the chain answers none.
        var outside = Transcript("d")
        let standby = try #require(published(outside.reply(chain(["a", "b"], epoch: 2), .joining, lease: nil, history: history((2, 1)))))
        #expect { try standby.checkReads(.any, at: 0, me: node("d")) } throws: { ($0 as? CatenaError)?.code == .redirect }
    }

    @Test func aHeadAnswersReadsOnlyOnceItsSuccessorReportedItsPosition() throws {
        // A head over a log ending at 1.3 — restored from an old backup, say: until its successor
        // reports, it cannot tell that the chain holds more, so it answers no reads.
        var t = Transcript("a", logEnd: lsn(1, 3))
        let view = try #require(published(t.reply(chain(["a", "b"], epoch: 2), history: history((1, 1), (2, nil)))))
        #expect(view.readsWaitForSuccessor)
        #expect { try view.checkReads(.linearizable, at: 0, me: node("a")) } throws: { ($0 as? CatenaError)?.code == .unavailable }
        // Its successor holds no more than it: reads are answered.
        let open = try #require(published(t.m.successorReported(lsn(1, 3), epoch: 2, from: node("b"))))
        try open.checkReads(.linearizable, at: 0, me: node("a"))
        // Its successor holds more: the log lost records; the node stops and answers nothing.
        var restored = Transcript("a", logEnd: lsn(1, 1))
        _ = restored.reply(chain(["a", "b"], epoch: 2), history: history((1, 1), (2, nil)))
        let stopped = try #require(published(restored.m.successorReported(lsn(1, 3), epoch: 2, from: node("b"))))
        #expect(stopped.failure?.code == .corruption)
        #expect(throws: CatenaError.self) { try stopped.checkReads(.any, at: 0, me: node("a")) }
        // A head whose successor left before reporting has nobody left to wait for.
        var alone = Transcript("a", logEnd: lsn(1, 3))
        _ = alone.reply(chain(["a", "b"], epoch: 2), history: history((1, 1), (2, 4)))
        try #require(published(alone.reply(chain(["a"], epoch: 3), history: history((1, 1), (2, 4), (3, nil))))).checkReads(.linearizable, at: 0, me: node("a"))
        // A single member has no successor to wait for.
        var single = Transcript("a", logEnd: lsn(1, 3))
        try #require(published(single.reply(chain(["a"], epoch: 2), history: history((1, 1), (2, nil))))).checkReads(.linearizable, at: 0, me: node("a"))
    }

    // MARK: Rejoining

    @Test func aStandbyWaitsForTheEpochStartTruncatesThenCopiesFromTheTail() {
        var t = Transcript("c", logEnd: lsn(1, 8))
        _ = t.reply(chain(["a", "b"], epoch: 3), .joining, lease: nil, history: history((1, 1), (3, nil)))
        #expect(t.m.state == .joining(.waitingForEpochStart(until: 2 * second)))
        // The head reports it: truncate by the history that has it.
        t.now = second / 2
        let h = history((1, 1), (3, 6))
        let truncating = t.reply(chain(["a", "b"], epoch: 3), .joining, lease: nil, history: h)
        #expect(has(truncating) { $0 == .truncateToShared(h, keeping: .zero) })
        let copying = t.m.truncated(end: lsn(1, 5), removed: 3)
        #expect(copying.last == .startCatchUp(from: member("b"), fullCopy: false, after: 0))
        #expect(notes(copying).first?.contains("truncated 3 records") == true)
        #expect(t.m.counters.recordsTruncated == 3)
        // The tail changes: copy from the new one.
        let moved = t.reply(chain(["a"], epoch: 4), .joining, lease: nil, history: history((1, 1), (3, 6), (4, 9)))
        #expect(Array(moved.prefix(2)) == [.stopCatchUp, .startCatchUp(from: member("a"), fullCopy: false, after: 0)])
    }

    @Test func aStandbyTruncatesByTheHistoryItHasOnceTheWaitRunsOut() {
        var t = Transcript("c", logEnd: lsn(1, 8))
        _ = t.reply(chain(["a", "b"], epoch: 3), .joining, lease: nil, history: history((1, 1), (3, nil)))
        #expect(t.m.tick(now: 2 * second - 1).isEmpty)
        let late = t.m.tick(now: 2 * second)
        #expect(has(late) { $0 == .truncateToShared(history((1, 1), (3, nil)), keeping: .zero) })
    }

    @Test func aTailThatCannotContinueTheLogMeansADiscardAndACopyFromZero() {
        var t = Transcript("c", logEnd: lsn(1, 8))
        _ = t.reply(chain(["a", "b"], epoch: 3), .joining, lease: nil, history: history((1, 1), (3, 9)))
        _ = t.m.truncated(end: lsn(1, 8), removed: 0)
        // Divergence the history could not show: discard, copy from zero (not a full copy).
        #expect(t.m.catchUpFailed(CatenaError(.lsnOutOfOrder, "x")).last == .discardLog)
        #expect(t.m.truncated(end: .zero, removed: 8).last == .startCatchUp(from: member("b"), fullCopy: false, after: 0))
        // History the tail compacted: discard, full copy (and it stays a full copy).
        #expect(t.m.catchUpFailed(CatenaError(.historyCompacted, "x")).last == .discardLog)
        #expect(t.m.truncated(end: .zero, removed: 0).last == .startCatchUp(from: member("b"), fullCopy: true, after: 0))
        // Anything else is retried after a doubling pause, up to a second.
        let delays = (0..<8).compactMap { _ -> UInt64? in
            if case .startCatchUp(_, true, let after)? = t.m.catchUpFailed(CatenaError(.unavailable, "x")).last { return after }
            return nil
        }
        #expect(delays == [20, 40, 80, 160, 320, 640, 1000, 1000].map { $0 * 1_000_000 })
        // The local log failing stops the node.
        let failed = t.m.catchUpFailed(CatenaError(.diskFull, "x"))
        #expect(t.m.state == .failed(CatenaError(.diskFull, "x")) && has(failed) { $0 == .stopCatchUp })
    }

    @Test func anAppendedStandbyStopsCopyingReadsItsLogAndBuildsAFreshMachine() throws {
        var t = Transcript("c", logEnd: lsn(1, 8))
        _ = t.reply(chain(["a", "b"], epoch: 3), .joining, lease: nil, history: history((1, 1), (3, 9)))
        _ = t.m.truncated(end: lsn(1, 8), removed: 0)
        let appended = t.reply(chain(["a", "b", "c"], epoch: 4), history: history((1, 1), (3, 9), (4, 12)))
        #expect(Array(appended.prefix(2)) == [.stopCatchUp, .loadLog])
        #expect(t.m.state == .rebuilding)
        // Writes meanwhile are redirected or refused, replication waits.
        #expect(refusal(t.write(request(1))) == .unavailable)
        #expect(refusal(t.m.replicate([], epoch: 4, from: node("b"))) == .epochAhead)
        let built = t.m.logLoaded(end: lsn(3, 11), recentRequests: [.init(requestID: RequestID(high: 7, low: 1), lsn: lsn(3, 11))])
        #expect(t.m.state == .member && t.m.replica?.lastAccepted == lsn(3, 11))
        #expect(try #require(published(built)).readsBlocked, "no reads before it holds its predecessor's read target")
        // It answers a retry of a write in its log exactly once (a tail holds its log committed).
        #expect(t.m.replica?.acknowledged == lsn(3, 11))
    }

    @Test func aMemberWhoseLogHoldsWritesTheChainNeverCommittedTruncatesAndRebuilds() {
        var t = Transcript("a", logEnd: lsn(2, 10))
        _ = t.reply(chain(["a", "b"], epoch: 2), history: history((1, 1), (2, 8)))
        _ = t.m.successorReported(lsn(2, 10), epoch: 2, from: node("b"))
        let w = t.write(request(1))
        #expect(appended(w).count == 1)
        // The history now says epoch 3 started at seq 9: this log's seqs 9... are an old head's.
        let h = history((1, 1), (2, 8), (3, 9))
        let out = t.reply(chain(["b", "a"], epoch: 3), history: h)
        #expect(has(out) { if case .answerAll(let e) = $0 { e.code == .redirect } else { false } })
        #expect(has(out) { $0 == .disconnectSuccessor } && has(out) { $0 == .disconnectPredecessor })
        #expect(has(out) { $0 == .truncateToShared(h, keeping: .zero) })
        #expect(t.m.state == .rebuilding && t.m.replica == nil)
        #expect(t.m.truncated(end: lsn(2, 8), removed: 3).last == .loadLog)
        _ = t.m.logLoaded(end: lsn(2, 8), recentRequests: [])
        #expect(t.m.state == .member && t.m.replica?.role == .tail && t.m.replica?.lastAccepted == lsn(2, 8))
    }

    /// Seed 568611: a middle member took its head's first writes of epoch 11 (the head had
    /// learned where the epoch starts; this node had not yet), then a heartbeat reply the master
    /// sent before it recorded that start arrived. That history cannot tell whether the records are the chain's: they are
    /// kept, and a later history decides.
    @Test func aMemberKeepsRecordsOfAnEpochWhoseStartItsHistoryDoesNotKnowYet() throws {
        var t = Transcript("b", logEnd: lsn(7, 29))
        let before = history((7, 29), (10, 30), (11, nil))
        _ = t.reply(chain(["a", "b", "c"], epoch: 11), history: before)
        _ = t.m.replicate(try (30...32).map { try Record(type: .put, chainID: 1, key: Key("x"), lsn: lsn(11, $0), value: [1]).encoded() },
                          epoch: 11, from: node("a"))
        let late = t.reply(chain(["a", "b", "c"], epoch: 11), history: before)
        #expect(!has(late) { if case .truncateToShared = $0 { true } else { false } })
        #expect(t.m.state == .member && t.m.replica?.lastAccepted == lsn(11, 32))
        // A restart over that log with only the old history builds over it too.
        var r = Transcript("b", logEnd: lsn(11, 32), seen: SeenChain(configuration: chain(["a", "b", "c"], epoch: 11),
                                                                       history: history((7, 29), (10, 30), (11, nil))))
        let restarted = r.reply(chain(["a", "b", "c"], epoch: 11), history: history((7, 29), (10, 30), (11, nil)))
        #expect(!has(restarted) { if case .truncateToShared = $0 { true } else { false } })
    }

    @Test func aHeadRemovedFromTheChainGivesUpItsPendingWritesAndRejoins() {
        var t = Transcript("a", logEnd: lsn(1, 3))
        _ = t.reply(chain(["a", "b"], epoch: 1), history: history((1, 1)))
        _ = t.m.successorReported(lsn(1, 3), epoch: 1, from: node("b"))
        _ = t.write(request(1))
        // b took over with a's write (1, 4): epoch 2 starts at 5.
        let removed = t.reply(chain(["b"], epoch: 2), .joining, lease: nil, history: history((1, 1), (2, 5)))
        #expect(has(removed) { if case .replica(.refuse(RequestID(high: 7, low: 1)?, let e)) = $0 { e.code == .redirect } else { false } })
        #expect(has(removed) { $0 == .disconnectSuccessor })
        #expect(has(removed) { $0 == .truncateToShared(history((1, 1), (2, 5)), keeping: .zero) })
        #expect(t.m.state == .joining(.truncating) && t.m.replica == nil)
    }

    /// Only an acknowledgement made in the configuration the node runs counts as on every
    /// replica: a machine built as tail starts at its whole log, which may end in an older
    /// epoch's records the chain never committed.
    @Test func theCommitWatermarkIsAnAcknowledgementOfTheCurrentEpoch() throws {
        var t = Transcript("b", logEnd: lsn(4, 43))
        _ = t.reply(chain(["a", "b"], epoch: 6), history: history((4, 40), (6, 44)))
        #expect(t.m.replica?.acknowledged == lsn(4, 43), "a tail holds its durable log committed")
        #expect(t.m.commitWatermark == .zero, "but records of epoch 4 may be an old head's, to truncate")
        _ = t.m.replicate([try Record(type: .put, chainID: 1, key: Key("x"), lsn: lsn(6, 44), value: [1]).encoded()],
                          epoch: 6, from: node("a"))
        _ = t.m.durable(through: lsn(6, 44))
        #expect(t.m.commitWatermark == lsn(6, 44))
        _ = t.m.logFailed(CatenaError(.ioFailure, "x"))
        #expect(t.m.commitWatermark == .zero)
    }

    // MARK: The master

    /// A member's heartbeat says what is durable; once the node runs a configuration it is no
    /// member of, its whole log: records it took just before it learned it had left may become
    /// durable after (seed 351899), and the master must not append it behind a tail lacking them.
    @Test func aMemberReportsItsDurableLogAndANodeThatLeftItsWholeLog() throws {
        var t = Transcript("b")
        _ = t.reply(chain(["a", "b"], epoch: 1), history: history((1, 1)))
        _ = t.m.replicate(try (1...3).map { try Record(type: .put, chainID: 1, key: Key("x"), lsn: lsn(1, $0), value: [1]).encoded() },
                          epoch: 1, from: node("a"))
        #expect(t.m.positionToReport(durable: .zero, logEnd: lsn(1, 3)) == .zero)
        _ = t.reply(chain(["a"], epoch: 2), .joining, lease: nil, history: history((1, 1), (2, nil)))
        #expect(t.m.replica == nil && t.m.heartbeatEpoch == 2)
        #expect(t.m.positionToReport(durable: .zero, logEnd: lsn(1, 3)) == lsn(1, 3))
        // Appended again: a member, it reports what is durable.
        _ = t.reply(chain(["a", "b"], epoch: 3), history: history((1, 1), (2, 4), (3, nil)))
        #expect(t.m.positionToReport(durable: lsn(1, 2), logEnd: lsn(1, 3)) == lsn(1, 2))
        // Before it runs any configuration (a fresh or restarted node, which takes no replication
        // yet), what is durable.
        #expect(Transcript("c").m.positionToReport(durable: .zero, logEnd: lsn(1, 3)) == .zero)
    }

    @Test func aNodeTheMasterForgotStopsAndOneItNeverKnewWaitsToBeAdded() {
        var t = Transcript("z")
        let unknown = NodeStateMachine.Reply(configuration: chain(["a"], epoch: 1), standing: .unknown, lease: nil, history: history((1, 1)))
        #expect(t.m.heartbeatReplied(unknown, sentAt: 0, logEnd: .zero, now: 0) == [.awaitAdding])
        #expect(t.m.heartbeatReplied(unknown, sentAt: 0, logEnd: .zero, now: 0).isEmpty, "said once")
        _ = t.reply(chain(["a"], epoch: 2), .joining, lease: nil, history: history((1, 1), (2, 1)))
        #expect(t.m.heartbeatReplied(unknown, sentAt: 0, logEnd: .zero, now: 0).last == .stop)
    }

    // MARK: Failure and shutdown

    @Test func aFailedLogStopsWritesAndReplicationAndIsReportedInHeartbeats() throws {
        var t = Transcript("b")
        _ = t.reply(chain(["a", "b"], epoch: 1), history: history((1, 1)))
        let failed = t.m.logFailed(CatenaError(.ioFailure, "fsync failed"))
        // Writes taken may still commit through the rest of the chain: unknown, retried.
        #expect(has(failed) { if case .answerAll(let e) = $0 { e.code == .unavailable } else { false } })
        #expect(try #require(published(failed)).failure?.code == .ioFailure)
        #expect(t.m.failure?.code == .ioFailure)
        #expect(refusal(t.write(request(1))) == .unavailable)
        #expect(refusal(t.m.replicate([], epoch: 1, from: node("a"))) == .ioFailure)
        #expect(t.m.upstreamStart(for: node("a")) == nil)
    }

    @Test func recordsTheLogWouldRefuseCostTheConnectionAFailingLogStopsTheNode() throws {
        var t = Transcript("b")
        _ = t.reply(chain(["a", "b"], epoch: 1), history: history((1, 1)))
        let r = try Record(type: .put, chainID: 1, key: Key("k"), lsn: lsn(1, 1), value: [1]).encoded()
        let refused = t.m.replicate([r], epoch: 1, from: node("a")) { (_) throws(CatenaError) in throw CatenaError(.valueTooLarge, "x") }
        #expect(refusal(refused) == .protocolViolation && t.m.failure == nil)
        let broken = t.m.replicate([r], epoch: 1, from: node("a")) { (_) throws(CatenaError) in throw CatenaError(.diskFull, "x") }
        #expect(refusal(broken) == .diskFull && t.m.failure?.code == .diskFull)
        // Only the predecessor replicates.
        var u = Transcript("b")
        _ = u.reply(chain(["a", "b"], epoch: 1), history: history((1, 1)))
        #expect(refusal(u.m.replicate([r], epoch: 1, from: node("x"))) == .protocolViolation)
    }

    @Test func aDrainRefusesNewWritesThenAnswersWhatIsLeft() {
        var t = Transcript("a")
        _ = t.reply(chain(["a"], epoch: 1), history: history((1, 1)))
        _ = t.write(request(1))
        #expect(has(t.m.drain()) { $0 == .stopCatchUp })
        #expect(refusal(t.write(request(2))) == .unavailable)
        // What is already taken may still commit.
        #expect(has(t.m.durable(through: lsn(1, 1))) { if case .replica(.committed) = $0 { true } else { false } })
        #expect(has(t.m.drainEnded()) { if case .answerAll(let e) = $0 { e.code == .unavailable } else { false } })
    }
}
