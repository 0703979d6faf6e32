import CatenaCore
import Testing

private func node(_ s: String) -> NodeID { try! NodeID(s) }
private func member(_ s: String) -> ChainMember { ChainMember(id: node(s), address: "127.0.0.1:\(7000 + Int(s.utf8.last!))") }
private func chain(_ ids: [String], epoch: UInt64 = 1) -> ChainConfiguration {
    try! ChainConfiguration(clusterID: "test", chainID: 1, epoch: epoch, members: ids.map(member))
}
private func request(_ n: UInt64, key k: String = "k", value: String = "v") -> WriteRequest {
    WriteRequest(requestID: RequestID(high: 1, low: n), type: .put, key: try! Key(k), value: Array(value.utf8))
}
private func appended(_ actions: [ReplicaStateMachine.Action]) -> [EncodedRecord] {
    actions.flatMap { if case .append(let r) = $0 { return r } else { return [] } }
}
private func forwarded(_ actions: [ReplicaStateMachine.Action]) -> [EncodedRecord] {
    actions.flatMap { if case .forward(let r, _) = $0 { return r } else { return [] } }
}
private func commits(_ actions: [ReplicaStateMachine.Action]) -> [ReplicaStateMachine.Commit] {
    actions.flatMap { if case .committed(let c) = $0 { return c } else { return [] } }
}
private func acks(_ actions: [ReplicaStateMachine.Action]) -> [LSN] {
    actions.compactMap { if case .acknowledge(let l, _, _) = $0 { return l } else { return nil } }
}
private func refusals(_ actions: [ReplicaStateMachine.Action]) -> [CatenaError.Code] {
    actions.compactMap { if case .refuse(_, let e) = $0 { return e.code } else { return nil } }
}
private func remembered(_ commits: [ReplicaStateMachine.Commit]) -> [ReplicaStateMachine.RememberedRequest] {
    commits.map { .init(requestID: $0.requestID, lsn: $0.lsn) }
}
/// Writes at `head`, makes it durable there, and returns what the head forwards: records go to
/// the successor only once durable locally.
private func writeDurably(_ head: inout ReplicaStateMachine, _ r: WriteRequest, now: UInt64) -> [EncodedRecord] {
    let written = appended(head.write(r, now: now))
    guard let last = written.last else { return [] }
    return forwarded(head.durable(through: last.lsn))
}

@Suite("Replica state machine")
struct ReplicaStateMachineTests {
    @Test func headAssignsForwardsAndCommitsOnlyAfterTheTailAcknowledges() {
        var head = ReplicaStateMachine(me: node("a"), configuration: chain(["a", "b", "c"]), lastLSN: LSN(epoch: 1, seq: 10))
        let a1 = head.write(request(1), now: 99)
        let records = appended(a1)
        #expect(records.map(\.lsn) == [LSN(epoch: 1, seq: 11)])
        #expect(records.first?.header.timestamp == 99)
        #expect(records.first?.header.requestID == RequestID(high: 1, low: 1))
        // Forwarded only once durable locally; and durable locally is not enough to commit: the
        // chain has not acknowledged.
        #expect(forwarded(a1).isEmpty)
        let d = head.durable(through: LSN(epoch: 1, seq: 11))
        #expect(forwarded(d) == records)
        #expect(commits(d).isEmpty)
        let done = head.acknowledged(through: LSN(epoch: 1, seq: 11), epoch: 1)
        #expect(commits(done) == [.init(requestID: RequestID(high: 1, low: 1), lsn: LSN(epoch: 1, seq: 11))])
        #expect(head.inFlightBytes == 0 && head.sentCount == 0)
    }

    @Test func aRestartedHeadAnswersRetriesOfItsLogExactlyOnce() {
        // The log ends at seq 12; its last records carry requests 1 and 2 (seq 11, 12).
        let recent: [ReplicaStateMachine.Commit] = [
            .init(requestID: RequestID(high: 1, low: 1), lsn: LSN(epoch: 1, seq: 11)),
            .init(requestID: RequestID(high: 1, low: 2), lsn: LSN(epoch: 1, seq: 12)),
        ]
        var head = ReplicaStateMachine(me: node("a"), configuration: chain(["a", "b"]), lastLSN: LSN(epoch: 1, seq: 12),
                                       recentRequests: remembered(recent))
        // Not known to be committed yet: a retry appends nothing and waits.
        #expect(head.write(request(1), now: 5).isEmpty)
        #expect(head.lastAccepted == LSN(epoch: 1, seq: 12))
        // The successor's acknowledgement commits both, with their original LSNs.
        #expect(commits(head.acknowledged(through: LSN(epoch: 1, seq: 12), epoch: 1)) == recent)
        #expect(commits(head.write(request(2), now: 6)) == [recent[1]])
        // A new request gets a new LSN.
        #expect(appended(head.write(request(3), now: 7)).map(\.lsn) == [LSN(epoch: 1, seq: 13)])
    }

    @Test func aRestartedTailHoldsItsDurableLogCommitted() {
        let recent: [ReplicaStateMachine.Commit] = [.init(requestID: RequestID(high: 1, low: 1), lsn: LSN(epoch: 1, seq: 4))]
        let tail = ReplicaStateMachine(me: node("b"), configuration: chain(["a", "b"]), lastLSN: LSN(epoch: 1, seq: 4), recentRequests: remembered(recent))
        #expect(tail.acknowledged == LSN(epoch: 1, seq: 4))
        var single = ReplicaStateMachine(me: node("a"), configuration: chain(["a"]), lastLSN: LSN(epoch: 1, seq: 4), recentRequests: remembered(recent))
        #expect(single.acknowledged == LSN(epoch: 1, seq: 4))
        #expect(commits(single.write(request(1), now: 1)) == recent)
    }

    @Test func middleAndTailAcknowledgeOnlyWhatIsDurableAndDownstream() {
        var middle = ReplicaStateMachine(me: node("b"), configuration: chain(["a", "b", "c"]), lastLSN: .zero)
        var tail = ReplicaStateMachine(me: node("c"), configuration: chain(["a", "b", "c"]), lastLSN: .zero)
        var head = ReplicaStateMachine(me: node("a"), configuration: chain(["a", "b", "c"]), lastLSN: .zero)
        let records = writeDurably(&head, request(1), now: 1) + writeDurably(&head, request(2), now: 2)
        let m = middle.replicate(records, epoch: 1)
        #expect(appended(m) == records && forwarded(m).isEmpty)
        // The middle forwards what is durable there, and nothing before.
        let m1 = middle.durable(through: LSN(epoch: 1, seq: 1))
        #expect(forwarded(m1) == [records[0]] && acks(m1).isEmpty)
        let t = tail.replicate(forwarded(m1), epoch: 1)
        #expect(appended(t) == [records[0]] && forwarded(t).isEmpty)
        // The tail acknowledges as soon as it is durable.
        #expect(acks(tail.durable(through: LSN(epoch: 1, seq: 1))) == [LSN(epoch: 1, seq: 1)])
        // The middle needs both: durable locally and acknowledged downstream.
        #expect(acks(middle.acknowledged(through: LSN(epoch: 1, seq: 1), epoch: 1)) == [LSN(epoch: 1, seq: 1)])
        let m2 = middle.durable(through: LSN(epoch: 1, seq: 2))
        // Seq 2 durable here but not downstream: still only seq 1 acknowledged, with the news
        // that this node holds seq 2 (for writes answered once the first k members hold them).
        #expect(acks(m2) == [LSN(epoch: 1, seq: 1)] && forwarded(m2) == [records[1]])
        #expect(m2.contains(.acknowledge(through: LSN(epoch: 1, seq: 1), held: [LSN(epoch: 1, seq: 2)], to: member("a"))))
        _ = tail.replicate(forwarded(m2), epoch: 1)
        #expect(acks(tail.durable(through: LSN(epoch: 1, seq: 2))) == [LSN(epoch: 1, seq: 2)])
        #expect(acks(middle.acknowledged(through: LSN(epoch: 1, seq: 2), epoch: 1)) == [LSN(epoch: 1, seq: 2)])
    }

    @Test func duplicatesAreSkippedAndGapsRefused() {
        var head = ReplicaStateMachine(me: node("a"), configuration: chain(["a", "b"]), lastLSN: .zero)
        var tail = ReplicaStateMachine(me: node("b"), configuration: chain(["a", "b"]), lastLSN: .zero)
        let r = (1...3).flatMap { writeDurably(&head, request($0), now: $0) }
        #expect(appended(tail.replicate(Array(r[0..<2]), epoch: 1)).count == 2)
        // A resend of 1...3: only 3 is new.
        #expect(appended(tail.replicate(r, epoch: 1)).map(\.lsn.seq) == [3])
        // A gap is refused and nothing is applied.
        let next = writeDurably(&head, request(4), now: 4) + writeDurably(&head, request(5), now: 5)
        let gap = tail.replicate([next[1]], epoch: 1)
        #expect(appended(gap).isEmpty && refusals(gap) == [.lsnOutOfOrder])
        #expect(tail.lastAccepted.seq == 3)
    }

    @Test func fencingRefusesOtherEpochs() {
        var tail = ReplicaStateMachine(me: node("b"), configuration: chain(["a", "b"], epoch: 5), lastLSN: .zero)
        var oldHead = ReplicaStateMachine(me: node("a"), configuration: chain(["a", "b"], epoch: 4), lastLSN: .zero)
        let stale = tail.replicate(writeDurably(&oldHead, request(1), now: 1), epoch: 4)
        #expect(refusals(stale) == [.staleEpoch] && appended(stale).isEmpty)
        #expect(refusals(tail.acknowledged(through: LSN(epoch: 5, seq: 1), epoch: 6)) == [.epochAhead])
        // A deposed head never sees its write committed: the new chain's tail refuses it.
        #expect(commits(oldHead.durable(through: LSN(epoch: 4, seq: 1))).isEmpty)
    }

    @Test func onlyTheHeadTakesWrites() {
        var middle = ReplicaStateMachine(me: node("b"), configuration: chain(["a", "b", "c"]), lastLSN: .zero)
        let actions = middle.write(request(1), now: 1)
        #expect(refusals(actions) == [.redirect])
        #expect(appended(actions).isEmpty)
    }

    @Test func retriesGetTheOriginalResult() {
        var single = ReplicaStateMachine(me: node("a"), configuration: chain(["a"]), lastLSN: .zero)
        let first = single.write(request(7, value: "one"), now: 1)
        #expect(appended(first).count == 1)
        // Retried while in flight: nothing new is appended.
        #expect(single.write(request(7, value: "one"), now: 2).isEmpty)
        #expect(commits(single.durable(through: LSN(epoch: 1, seq: 1))) == [.init(requestID: RequestID(high: 1, low: 7), lsn: LSN(epoch: 1, seq: 1))])
        // Retried after commit: the original LSN, no second write.
        let retry = single.write(request(7, value: "one"), now: 3)
        #expect(appended(retry).isEmpty)
        #expect(commits(retry) == [.init(requestID: RequestID(high: 1, low: 7), lsn: LSN(epoch: 1, seq: 1))])
        #expect(single.lastAccepted.seq == 1)
    }

    @Test func theHeadCountsTheBytesItHoldsUncommitted() {
        var head = ReplicaStateMachine(me: node("a"), configuration: chain(["a", "b"]), lastLSN: .zero)
        let sizes = (1...3 as ClosedRange<UInt64>).map { i in appended(head.write(request(i, value: String(repeating: "x", count: 1000)), now: i))[0].count }
        #expect(head.uncommittedBytes == sizes.reduce(0, +) && head.pendingCount == 3)
        _ = head.durable(through: head.lastAccepted)
        _ = head.acknowledged(through: LSN(epoch: 1, seq: 2), epoch: 1)
        #expect(head.uncommittedBytes == sizes[2] && head.pendingCount == 1)
        // A demoted head drops what it held: the new head decides those writes.
        _ = head.reconfigure(chain(["b"], epoch: 2))
        #expect(head.uncommittedBytes == 0 && head.pendingCount == 0)
    }

    @Test func aNewTailAcknowledgesWhatItHoldsAndANewSuccessorGetsAResend() {
        // a -> b -> c; c fails: b becomes tail and acknowledges what it holds.
        var b = ReplicaStateMachine(me: node("b"), configuration: chain(["a", "b", "c"]), lastLSN: .zero)
        var a = ReplicaStateMachine(me: node("a"), configuration: chain(["a", "b", "c"]), lastLSN: .zero)
        let r = (1...3).flatMap { writeDurably(&a, request($0), now: $0) }
        _ = b.replicate(r, epoch: 1)
        _ = b.durable(through: LSN(epoch: 1, seq: 3))
        #expect(acks(b.reconfigure(chain(["a", "b"], epoch: 2))) == [LSN(epoch: 1, seq: 3)])
        // b fails instead: a's new successor is c, which reports seq 1; a resends 2...3 from its log.
        var a2 = ReplicaStateMachine(me: node("a"), configuration: chain(["a", "b", "c"]), lastLSN: .zero)
        _ = (1...4).map { a2.write(request($0), now: $0) }
        _ = a2.durable(through: LSN(epoch: 1, seq: 3))
        #expect(a2.reconfigure(chain(["a", "c"], epoch: 2)).isEmpty)
        // Only what is durable is resent from the log; seq 4 is forwarded once durable.
        let resend = a2.successorReported(lastLSN: LSN(epoch: 1, seq: 1), epoch: 2)
        #expect(resend == [.resend(after: LSN(epoch: 1, seq: 1), through: LSN(epoch: 1, seq: 3), to: member("c"))])
        #expect(forwarded(a2.durable(through: LSN(epoch: 1, seq: 4))).map(\.lsn.seq) == [4])
        // Writes in the new epoch carry it.
        #expect(appended(a2.write(request(5), now: 5)).first?.lsn == LSN(epoch: 2, seq: 5))
    }

    // MARK: Reconfiguration (from a review: each of these failed before the fix)

    @Test func aRecordWithTheSameSeqButAnotherEpochIsNotADuplicate() {
        // a wrote (1,1) but never forwarded it; b became head and wrote (3,1). a, re-added as
        // tail with its old log, must not take b's record for a duplicate of its own.
        var a = ReplicaStateMachine(me: node("a"), configuration: chain(["a", "b"]), lastLSN: .zero)
        _ = a.write(request(1), now: 1)
        _ = a.durable(through: LSN(epoch: 1, seq: 1))
        #expect(refusals(a.reconfigure(chain(["b", "a"], epoch: 3))).contains(.redirect))  // gives up request 1
        var b = ReplicaStateMachine(me: node("b"), configuration: chain(["b", "a"], epoch: 3), lastLSN: .zero)
        let foreign = writeDurably(&b, request(99), now: 2)
        let answer = a.replicate(foreign, epoch: 3)
        #expect(refusals(answer) == [.lsnOutOfOrder] && appended(answer).isEmpty && acks(answer).isEmpty)
    }

    @Test func aDemotedHeadGivesUpItsPendingWrites() {
        var a = ReplicaStateMachine(me: node("a"), configuration: chain(["a", "b"]), lastLSN: .zero)
        _ = a.write(request(1), now: 1)
        _ = a.write(request(2), now: 2)
        let actions = a.reconfigure(chain(["b"], epoch: 2))
        let given = actions.compactMap { if case .refuse(let id?, let e) = $0, e.code == .redirect { return id } else { return nil } }
        #expect(given == [RequestID(high: 1, low: 1), RequestID(high: 1, low: 2)])
        #expect(a.inFlightBytes == 0 && a.sentCount == 0, "no successor any more: nothing is in flight")
    }

    @Test func weakerAcknowledgementModesAnswerOnceEnoughMembersHoldTheWrite() {
        // a -> b -> c -> d. Four writes: mode all, head, the first 2, the first 3.
        let members = ["a", "b", "c", "d"]
        var a = ReplicaStateMachine(me: node("a"), configuration: chain(members), lastLSN: .zero)
        var b = ReplicaStateMachine(me: node("b"), configuration: chain(members), lastLSN: .zero)
        var c = ReplicaStateMachine(me: node("c"), configuration: chain(members), lastLSN: .zero)
        let modes: [AckMode] = [.all, .head, .first(2), .first(3)]
        var records: [EncodedRecord] = []
        for (i, mode) in modes.enumerated() {
            var r = request(UInt64(i + 1))
            r.ack = mode
            records += appended(a.write(r, now: 1))
        }
        func held(_ actions: [ReplicaStateMachine.Action]) -> [UInt64] {
            actions.flatMap { if case .held(let h) = $0 { return h.map(\.requestID.low) } else { return [] } }
        }
        func heldLists(_ actions: [ReplicaStateMachine.Action]) -> [[UInt64]] {
            actions.compactMap { if case .acknowledge(_, let h, _) = $0 { return h.map(\.seq) } else { return nil } }
        }
        let last = records.last!.lsn
        // Durable at the head: the write in mode head is answered, no other.
        let atHead = a.durable(through: last)
        #expect(held(atHead) == [2])
        #expect(commits(atHead).isEmpty)
        // b makes them durable and says so (acknowledging nothing yet): the first 2 hold them.
        _ = b.replicate(forwarded(atHead), epoch: 1)
        let bDurable = b.durable(through: last)
        #expect(acks(bDurable) == [], "nothing is acknowledged downstream yet")
        #expect(heldLists(bDurable) == [], "an acknowledgement of nothing is not sent")
        #expect(b.held.map(\.seq) == [4])
        #expect(held(a.acknowledged(through: .zero, held: b.held, epoch: 1)) == [3])
        // c too, and b relays it: the first 3 hold them.
        _ = c.replicate(forwarded(bDurable), epoch: 1)
        _ = c.durable(through: last)
        #expect(c.held.map(\.seq) == [4])
        _ = b.acknowledged(through: .zero, held: c.held, epoch: 1)
        #expect(b.held.map(\.seq) == [4, 4])
        #expect(held(a.acknowledged(through: .zero, held: b.held, epoch: 1)) == [4])
        // The tail's acknowledgement commits all four (the one in mode all answered only now).
        let done = a.acknowledged(through: last, held: [last, last, last], epoch: 1)
        #expect(commits(done).map(\.requestID.low) == [1, 2, 3, 4])
        #expect(held(done).isEmpty)
        // A new configuration forgets what the successor said of the members after it: which
        // member is how far down may have changed.
        _ = a.reconfigure(chain(["a", "b", "d"], epoch: 2))
        #expect(a.downstreamHeld.isEmpty)
    }

    @Test func aSettlementOfAWeakWriteInFlightWaitsForItsCommit() {
        var a = ReplicaStateMachine(me: node("a"), configuration: chain(["a", "b"]), lastLSN: .zero)
        var r = request(1)
        r.ack = .head
        let lsn = appended(a.write(r, now: 1)).last!.lsn
        // The client gave up and asks whether the write applied: that waits for the commit, and
        // so does the write's own answer (both wait on the request id).
        #expect(a.write(.fence(requestID: r.requestID, key: r.key, sentAt: 1), now: 2).isEmpty)
        let durable = a.durable(through: lsn)
        #expect(!durable.contains { if case .held = $0 { true } else { false } })
        #expect(commits(a.acknowledged(through: lsn, epoch: 1)).map(\.lsn) == [lsn])
    }

    @Test func aNewPredecessorHearsTheAcknowledgementAgain() {
        // a -> b -> c: c acknowledged seq 1 to b; b died before telling a. Chain becomes a -> c.
        var a = ReplicaStateMachine(me: node("a"), configuration: chain(["a", "b", "c"]), lastLSN: .zero)
        var c = ReplicaStateMachine(me: node("c"), configuration: chain(["a", "b", "c"]), lastLSN: .zero)
        let r = writeDurably(&a, request(1), now: 1)
        _ = c.replicate(r, epoch: 1)
        #expect(acks(c.durable(through: LSN(epoch: 1, seq: 1))) == [LSN(epoch: 1, seq: 1)])  // to b, lost
        let again = c.reconfigure(chain(["a", "c"], epoch: 2))
        #expect(again == [.acknowledge(through: LSN(epoch: 1, seq: 1), held: [LSN(epoch: 1, seq: 1)], to: member("a"))])
        _ = a.reconfigure(chain(["a", "c"], epoch: 2))
        #expect(commits(a.acknowledged(through: LSN(epoch: 1, seq: 1), epoch: 2)).map(\.lsn.seq) == [1])
    }

    @Test func anAcknowledgementOfUnsentRecordsIsRefused() {
        var a = ReplicaStateMachine(me: node("a"), configuration: chain(["a", "b"]), lastLSN: .zero)
        _ = a.write(request(1), now: 1)
        #expect(refusals(a.acknowledged(through: LSN(epoch: 1, seq: 1000), epoch: 1)) == [.protocolViolation])
        // Still waits for the real acknowledgement.
        _ = a.write(request(2), now: 2)
        #expect(commits(a.durable(through: LSN(epoch: 1, seq: 2))).isEmpty)
        #expect(commits(a.acknowledged(through: LSN(epoch: 1, seq: 2), epoch: 1)).count == 2)
    }

    @Test func aNewHeadAnswersRetriesExactlyOnce() {
        // a -> b; request 7 reaches b through a; a dies; b is head; the client retries at b.
        var a = ReplicaStateMachine(me: node("a"), configuration: chain(["a", "b"]), lastLSN: .zero)
        var b = ReplicaStateMachine(me: node("b"), configuration: chain(["a", "b"]), lastLSN: .zero)
        _ = b.replicate(writeDurably(&a, request(7), now: 1), epoch: 1)
        _ = b.reconfigure(chain(["b"], epoch: 2))
        // Not yet durable at b: the retry adds nothing; it commits once durable.
        #expect(b.write(request(7), now: 2).isEmpty)
        #expect(commits(b.durable(through: LSN(epoch: 1, seq: 1))) == [.init(requestID: RequestID(high: 1, low: 7), lsn: LSN(epoch: 1, seq: 1))])
        #expect(commits(b.write(request(7), now: 3)) == [.init(requestID: RequestID(high: 1, low: 7), lsn: LSN(epoch: 1, seq: 1))])
        #expect(b.lastAccepted.seq == 1)
    }

    @Test func recordsMustBelongToTheMessage() {
        var b = ReplicaStateMachine(me: node("b"), configuration: chain(["a", "b"], epoch: 2), lastLSN: .zero)
        let future = try! Record(type: .put, chainID: 1, key: Key("k"), lsn: LSN(epoch: 9, seq: 1), value: [1]).encoded()
        let otherChain = try! Record(type: .put, chainID: 42, key: Key("k"), lsn: LSN(epoch: 2, seq: 1), value: [1]).encoded()
        #expect(refusals(b.replicate([future], epoch: 2)) == [.protocolViolation])
        #expect(refusals(b.replicate([otherChain], epoch: 2)) == [.protocolViolation])
        #expect(b.lastAccepted == .zero)
    }

    @Test func rememberingRequestsStaysCheapWithManyPending() {
        var limits = ReplicaStateMachine.Limits()
        limits.rememberedRequests = 100
        limits.requestWindow = 1_000
        var single = ReplicaStateMachine(me: node("a"), configuration: chain(["a"]), lastLSN: .zero, limits: limits)
        for i in 1...3000 as ClosedRange<UInt64> { _ = single.write(request(i), now: i) }
        // All pending (nothing durable yet): none may be forgotten, so retries are still answered.
        #expect(single.write(request(1), now: 9).isEmpty)
        #expect(commits(single.durable(through: single.lastAccepted)).count == 3000)
        // Committed ones older than the window (1,000 ns of head time) are forgotten, oldest
        // first, keeping at least the last 100: a very old id is new again, a recent one is not.
        _ = single.write(request(5000), now: 3001)
        #expect(appended(single.write(request(1), now: 3002)).count == 1)
        #expect(commits(single.write(request(2500), now: 3003)).map(\.lsn.seq) == [2500])
        #expect(single.requestsForgottenEarly == 0)
    }

    @Test func idsWithinTheWindowAreKeptHoweverManyAndAHardCapCountsWhatItDrops() {
        var limits = ReplicaStateMachine.Limits()
        limits.rememberedRequests = 10
        limits.maxRememberedRequests = 500
        var single = ReplicaStateMachine(me: node("a"), configuration: chain(["a"]), lastLSN: .zero, limits: limits)
        for i in 1...400 as ClosedRange<UInt64> { _ = single.write(request(i), now: i) }
        _ = single.durable(through: single.lastAccepted)
        // All 400 within the 60 s window: every retry is answered with its original LSN.
        #expect(commits(single.write(request(1), now: 401)).map(\.lsn.seq) == [1])
        for i in 401...700 as ClosedRange<UInt64> { _ = single.write(request(i), now: i) }
        _ = single.durable(through: single.lastAccepted)
        // Past the hard cap the oldest go early, and are counted.
        #expect(single.requestsForgottenEarly == 200)
        #expect(appended(single.write(request(1), now: 701)).count == 1)
    }

    /// A seeded simulation of a 3-node chain: per-link FIFO delivery in random interleavings,
    /// random durability progress. Nothing commits before every replica holds it durably; the
    /// logs stay prefixes of each other; once quiet, everything accepted commits and the logs
    /// are identical.
    @Test(arguments: 0..<20 as Range<UInt64>)
    func simulatedChain(seed: UInt64) {
        var rng = SplitMix64(seed: seed)
        let config = chain(["a", "b", "c"])
        var machines = ["a", "b", "c"].map { ReplicaStateMachine(me: node($0), configuration: config, lastLSN: .zero) }
        var logs: [[EncodedRecord]] = [[], [], []]
        var durableCount = [0, 0, 0]
        var downLinks: [[[EncodedRecord]]] = [[], []]   // a->b, b->c
        var upLinks: [[LSN]] = [[], []]                  // b->a, c->b
        var committed: [LSN] = []
        var accepted = 0

        func perform(_ actions: [ReplicaStateMachine.Action], at i: Int) {
            for action in actions {
                switch action {
                case .append(let r): logs[i] += r
                case .forward(let r, _): downLinks[i].append(r)
                case .acknowledge(let l, _, _): upLinks[i - 1].append(l)
                case .committed(let c): committed += c.map(\.lsn)
                case .refuse, .resend, .held: break
                }
            }
        }
        func check() {
            let minDurable = durableCount.min()!
            for lsn in committed { #expect(Int(lsn.seq) <= minDurable, "seed \(seed): \(lsn) committed before every replica had it durably") }
            // Forwarded only once durable: a node's durable log always holds its successor's.
            #expect(logs[1].count <= durableCount[0] && logs[2].count <= durableCount[1],
                    "seed \(seed): a successor got a record its predecessor had not made durable")
            #expect(logs[1].count <= logs[0].count && logs[2].count <= logs[1].count)
            #expect(Array(logs[0].prefix(logs[1].count)) == logs[1] && Array(logs[1].prefix(logs[2].count)) == logs[2])
        }
        for step in 0..<400 {
            switch Int.random(in: 0..<6, using: &rng) {
            case 0 where step < 300:
                let acts = machines[0].write(request(UInt64(step), key: "k\(step % 7)", value: "v\(step)"), now: UInt64(step))
                accepted += acts.contains { if case .append = $0 { return true } else { return false } } ? 1 : 0
                perform(acts, at: 0)
            case 1 where !downLinks[0].isEmpty:
                perform(machines[1].replicate(downLinks[0].removeFirst(), epoch: 1), at: 1)
            case 2 where !downLinks[1].isEmpty:
                perform(machines[2].replicate(downLinks[1].removeFirst(), epoch: 1), at: 2)
            case 3:
                let i = Int.random(in: 0..<3, using: &rng)
                if durableCount[i] < logs[i].count {
                    durableCount[i] = Int.random(in: (durableCount[i] + 1)...logs[i].count, using: &rng)
                    perform(machines[i].durable(through: logs[i][durableCount[i] - 1].lsn), at: i)
                }
            case 4 where !upLinks[0].isEmpty:
                perform(machines[0].acknowledged(through: upLinks[0].removeFirst(), epoch: 1), at: 0)
            case 5 where !upLinks[1].isEmpty:
                perform(machines[1].acknowledged(through: upLinks[1].removeFirst(), epoch: 1), at: 1)
            default:
                break
            }
            check()
        }
        // Quiesce: deliver everything, make everything durable.
        var rounds = 0
        while rounds < 10_000 && (!downLinks[0].isEmpty || !downLinks[1].isEmpty || !upLinks[0].isEmpty || !upLinks[1].isEmpty
                || durableCount != logs.map(\.count)) {
            rounds += 1
            if !downLinks[0].isEmpty { perform(machines[1].replicate(downLinks[0].removeFirst(), epoch: 1), at: 1) }
            if !downLinks[1].isEmpty { perform(machines[2].replicate(downLinks[1].removeFirst(), epoch: 1), at: 2) }
            for i in 0..<3 where durableCount[i] < logs[i].count {
                durableCount[i] = logs[i].count
                perform(machines[i].durable(through: logs[i].last!.lsn), at: i)
            }
            if !upLinks[1].isEmpty { perform(machines[1].acknowledged(through: upLinks[1].removeFirst(), epoch: 1), at: 1) }
            if !upLinks[0].isEmpty { perform(machines[0].acknowledged(through: upLinks[0].removeFirst(), epoch: 1), at: 0) }
            check()
        }
        #expect(accepted > 20, "seed \(seed): the simulation accepted only \(accepted) writes")
        #expect(logs[0] == logs[1] && logs[1] == logs[2], "seed \(seed): replicas differ once quiet")
        #expect(committed.count == accepted, "seed \(seed): \(accepted) accepted, \(committed.count) committed")
        #expect(committed.map(\.seq) == committed.map(\.seq).sorted())
        #expect(machines[0].inFlightBytes == 0)
    }
}
