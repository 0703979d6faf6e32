import CatenaCore
import Testing

private func node(_ s: String) -> NodeID { try! NodeID(s) }
private func chain(_ ids: [String], epoch: UInt64 = 1) -> ChainConfiguration {
    try! ChainConfiguration(clusterID: "test", chainID: 1, epoch: epoch,
                            members: ids.map { ChainMember(id: node($0), address: "127.0.0.1:\(7000 + Int($0.utf8.last!))") })
}
private func put(_ n: UInt64, _ value: String, key: String = "k", if condition: WriteCondition? = nil) -> WriteRequest {
    WriteRequest(requestID: RequestID(high: 2, low: n), type: .put, key: try! Key(key), value: Array(value.utf8), condition: condition)
}
private func delete(_ n: UInt64, key: String = "k", if condition: WriteCondition? = nil) -> WriteRequest {
    WriteRequest(requestID: RequestID(high: 2, low: n), type: .delete, key: try! Key(key), condition: condition)
}
private func appended(_ actions: [ReplicaStateMachine.Action]) -> [EncodedRecord] {
    actions.flatMap { if case .append(let r) = $0 { return r } else { return [] } }
}
private func refusal(_ actions: [ReplicaStateMachine.Action]) -> CatenaError? {
    actions.lazy.compactMap { if case .refuse(_, let e) = $0 { return e } else { return nil } }.first
}

/// Conditional writes at the head: the condition is decided against the newest version in the
/// head's log — records in flight (not yet durable, not yet committed) as well as the durable
/// log the node passes in — and a retry gets its original result, not a second decision.
@Suite("Conditional writes")
struct ConditionalWriteTests {
    @Test func aConditionSeesWritesStillInFlight() throws {
        var head = ReplicaStateMachine(me: node("a"), configuration: chain(["a", "b"]), lastLSN: .zero)
        let first = appended(head.write(put(1, "v1", if: .absent), now: 1))
        #expect(first.map(\.lsn.seq) == [1])
        // Not durable, not committed: a compare-and-swap against it passes at once.
        #expect(appended(head.write(put(3, "v3", if: .version(LSN(epoch: 1, seq: 1))), now: 3)).map(\.lsn.seq) == [2])
        #expect(appended(head.write(put(5, "v5", if: .contentChecksum(XXH3.hash(Array("v3".utf8)))), now: 5)).map(\.lsn.seq) == [3])
        // A delete in flight makes the key absent.
        #expect(appended(head.write(delete(6, if: .version(LSN(epoch: 1, seq: 3))), now: 6)).map(\.lsn.seq) == [4])
        #expect(appended(head.write(put(8, "v8", if: .absent), now: 8)).map(\.lsn.seq) == [5])
        // Other keys are not affected.
        #expect(appended(head.write(put(9, "x", key: "other", if: .absent), now: 9)).map(\.lsn.seq) == [6])
        // A create-only put that meets the version in flight (5) is refused — but not before that
        // version is committed: until then the head might fail and the version never exist.
        let second = head.write(put(2, "v2", if: .absent), now: 10)
        #expect(second.isEmpty, "held")
        #expect(refusal(head.write(put(4, "v4", if: .version(LSN(epoch: 1, seq: 1))), now: 11)) == nil, "held")
        _ = head.durable(through: LSN(epoch: 1, seq: 6))
        let partly = head.acknowledged(through: LSN(epoch: 1, seq: 5), epoch: 1)
        #expect(refusal(partly) == nil, "the refusals wait for everything the head took before them")
        let done = head.acknowledged(through: LSN(epoch: 1, seq: 6), epoch: 1)
        let refused = done.compactMap { if case .refuse(let id?, let e) = $0 { return (id.low, e.code) } else { return nil } }
        #expect(refused.map(\.0) == [2, 4] && refused.allSatisfy { $0.1 == .preconditionFailed })
        #expect(done.contains { if case .refuse(_, let e) = $0 { e.message.contains("version 1.5") } else { false } })
        // Everything committed: a refusal is answered at once.
        let stored: (Key) throws(CatenaError) -> KeyVersion? = { _ in KeyVersion(lsn: LSN(epoch: 1, seq: 5), contentChecksum: XXH3.hash(Array("v8".utf8))) }
        #expect(refusal(head.write(put(7, "v7", if: .absent), now: 12, durableVersion: stored))?.code == .preconditionFailed)
        #expect(head.lastAccepted.seq == 6, "no refused write got an LSN")
    }

    @Test func aHeldRefusalIsRedirectedWhenTheHeadIsDemoted() {
        var head = ReplicaStateMachine(me: node("a"), configuration: chain(["a", "b"]), lastLSN: .zero)
        _ = head.write(put(1, "v1"), now: 1)
        #expect(head.write(put(2, "v2", if: .absent), now: 2).isEmpty)
        let actions = head.reconfigure(chain(["b"], epoch: 2))
        let redirected = actions.compactMap { if case .refuse(let id?, let e) = $0, e.code == .redirect { return id.low } else { return nil } }
        #expect(redirected == [1, 2], "the pending write and the held refusal go to the new head")
    }

    @Test func aConditionSeesTheDurableLogOnceRecordsLeaveTheFlight() {
        var head = ReplicaStateMachine(me: node("a"), configuration: chain(["a"]), lastLSN: .zero)
        let records = appended(head.write(put(1, "v1"), now: 1))
        _ = head.durable(through: records[0].lsn)
        // The machine no longer holds the record: the durable log (the store) answers.
        let stored = KeyVersion(lsn: records[0].lsn, contentChecksum: records[0].header.contentChecksum)
        let lookup: (Key) throws(CatenaError) -> KeyVersion? = { $0 == (try! Key("k")) ? stored : nil }
        #expect(refusal(head.write(put(2, "v2", if: .absent), now: 2, durableVersion: lookup))?.code == .preconditionFailed)
        #expect(appended(head.write(put(3, "v3", if: .version(records[0].lsn)), now: 3, durableVersion: lookup)).count == 1)
        // A store that cannot serve the version (damage) refuses the write with its error.
        let damaged: (Key) throws(CatenaError) -> KeyVersion? = { _ throws(CatenaError) in throw CatenaError(.corruption, "damaged") }
        #expect(refusal(head.write(put(4, "v4", key: "z", if: .absent), now: 4, durableVersion: damaged))?.code == .corruption)
        // An unconditional write never asks.
        #expect(appended(head.write(put(5, "v5", key: "z"), now: 5, durableVersion: damaged)).count == 1)
    }

    @Test func aRetryGetsItsOriginalResultNotASecondDecision() {
        var head = ReplicaStateMachine(me: node("a"), configuration: chain(["a"]), lastLSN: .zero)
        let cas = put(1, "v1", if: .absent)
        let records = appended(head.write(cas, now: 1))
        // In flight: the retry waits for the original, though the key is no longer absent.
        #expect(head.write(cas, now: 2).isEmpty)
        _ = head.durable(through: records[0].lsn)
        let stored = KeyVersion(lsn: records[0].lsn, contentChecksum: records[0].header.contentChecksum)
        // Committed: the retry is answered with the original LSN.
        #expect(head.write(cas, now: 3, durableVersion: { _ in stored })
                == [.committed([.init(requestID: cas.requestID, lsn: records[0].lsn)])])
    }

    @Test func aNewHeadSeesTheVersionsItInheritedInFlight() {
        // a -> b: a write reaches b, which becomes head before making it durable.
        var a = ReplicaStateMachine(me: node("a"), configuration: chain(["a", "b"]), lastLSN: .zero)
        var b = ReplicaStateMachine(me: node("b"), configuration: chain(["a", "b"]), lastLSN: .zero)
        let r = appended(a.write(put(1, "v1"), now: 1))
        _ = a.durable(through: r[0].lsn)
        _ = b.replicate(r, epoch: 1)
        _ = b.reconfigure(chain(["b"], epoch: 2))
        #expect(b.write(put(2, "v2", if: .absent), now: 2).isEmpty, "refused once the inherited version commits")
        #expect(appended(b.write(put(3, "v3", if: .version(r[0].lsn)), now: 3)).map(\.lsn) == [LSN(epoch: 2, seq: 2)])
        let committed = b.durable(through: LSN(epoch: 2, seq: 2))
        #expect(refusal(committed)?.code == .preconditionFailed)
    }

    @Test func conditionsGoOnlyWhereTheyMeanSomething() {
        var head = ReplicaStateMachine(me: node("a"), configuration: chain(["a"]), lastLSN: .zero)
        #expect(refusal(head.write(delete(1, if: .absent), now: 1))?.code == .invalidArgument)
        let chunk = WriteRequest(requestID: RequestID(high: 2, low: 2), type: .chunk, key: try! Key("k"), value: [1],
                                 extensions: [.chunkAddress(ChunkAddress(upload: RequestID(high: 9, low: 9), index: 0))],
                                 condition: .absent)
        #expect(refusal(head.write(chunk, now: 2))?.code == .invalidArgument)
        #expect(head.lastAccepted == .zero)
    }

    @Test func theWireFormRoundTripsAndRefusesWhatItDoesNotKnow() throws {
        for c in [WriteCondition.absent, .version(LSN(epoch: 3, seq: 77)), .contentChecksum(0xdead_beef_0000_0001)] {
            #expect(try WriteCondition(decoding: c.encodedExtension.value) == c)
            #expect(c.encodedExtension.mustUnderstand)
        }
        #expect(throws: CatenaError.self) { try WriteCondition(decoding: [9]) }
        #expect(throws: CatenaError.self) { try WriteCondition(decoding: [2, 0, 0]) }
        #expect(throws: CatenaError.self) { try WriteCondition(decoding: []) }
    }
}

private func fence(_ n: UInt64, key: String = "k") -> WriteRequest {
    WriteRequest(requestID: RequestID(high: 2, low: n), type: .fence, key: try! Key(key))
}

/// Settling a write of unknown outcome: a fence under its request id, decided by the head like
/// any write, remembered like any request id.
@Suite("Settling writes")
struct SettlementTests {
    @Test func aWriteTheHeadNeverTookIsFencedAndALateCopyRefused() {
        var head = ReplicaStateMachine(me: node("a"), configuration: chain(["a"]), lastLSN: .zero)
        let fenced = appended(head.write(fence(1), now: 1))
        #expect(fenced.map(\.type) == [.fence] && fenced.first?.header.requestID == RequestID(high: 2, low: 1))
        // Before the fence commits a late copy is refused already, and a repeated settlement waits.
        #expect(refusal(head.write(put(1, "v"), now: 2))?.code == .notApplied)
        #expect(head.write(fence(1), now: 3).isEmpty)
        let done = head.durable(through: fenced[0].lsn)
        #expect(refusal(done)?.code == .notApplied, "the settlement is answered once the fence commits")
        #expect(!done.contains { if case .committed = $0 { true } else { false } })
        #expect(refusal(head.write(fence(1), now: 4))?.code == .notApplied)
        #expect(refusal(head.write(put(1, "v"), now: 5))?.code == .notApplied)
        #expect(head.lastAccepted.seq == 1, "nothing but the fence was appended")
    }

    @Test func aWriteTheHeadTookIsSettledAsAppliedWithItsLSN() {
        var head = ReplicaStateMachine(me: node("a"), configuration: chain(["a"]), lastLSN: .zero)
        let records = appended(head.write(put(1, "v"), now: 1))
        #expect(head.write(fence(1), now: 2).isEmpty, "in flight: the settlement waits for the commit")
        _ = head.durable(through: records[0].lsn)
        #expect(head.write(fence(1), now: 3) == [.committed([.init(requestID: RequestID(high: 2, low: 1), lsn: records[0].lsn)])])
    }

    @Test func aFenceOutlivesARestartAndAHeadChange() {
        // Restarted from its log: the fence's request id comes back marked as a fence.
        var restarted = ReplicaStateMachine(
            me: node("a"), configuration: chain(["a"]), lastLSN: LSN(epoch: 1, seq: 1),
            recentRequests: [.init(requestID: RequestID(high: 2, low: 1), lsn: LSN(epoch: 1, seq: 1), fence: true)])
        #expect(refusal(restarted.write(put(1, "v"), now: 1))?.code == .notApplied)
        #expect(refusal(restarted.write(fence(1), now: 1))?.code == .notApplied)
        // Replicated: the successor that becomes head refuses the late copy too.
        var a = ReplicaStateMachine(me: node("a"), configuration: chain(["a", "b"]), lastLSN: .zero)
        var b = ReplicaStateMachine(me: node("b"), configuration: chain(["a", "b"]), lastLSN: .zero)
        let f = appended(a.write(fence(7), now: 1))
        _ = a.durable(through: f[0].lsn)
        _ = b.replicate(f, epoch: 1)
        _ = b.reconfigure(chain(["b"], epoch: 2))
        #expect(refusal(b.write(put(7, "late"), now: 2))?.code == .notApplied)
    }

    @Test func aHeadThatMayHaveForgottenTheWriteRefusesToSettleIt() {
        func fence(_ n: UInt64, sentAt: UInt64) -> WriteRequest {
            var w = ByteWriter()
            w.u64(sentAt)
            return WriteRequest(requestID: RequestID(high: 2, low: n), type: .fence, key: try! Key("k"), value: w.bytes)
        }
        let second: UInt64 = 1_000_000_000
        var limits = ReplicaStateMachine.Limits()
        limits.requestWindow = 60 * second
        limits.rememberedRequests = 1
        var head = ReplicaStateMachine(me: node("a"), configuration: chain(["a"]), lastLSN: .zero, limits: limits)
        // Nothing forgotten yet: any write can be settled, even one of unknown send time.
        #expect(head.forgottenBefore == 0)
        for (n, t) in [(1, 100), (2, 200)] as [(UInt64, UInt64)] {
            let r = appended(head.write(put(n, "v"), now: t * second))
            _ = head.durable(through: r[0].lsn)
        }
        #expect(head.forgottenBefore == 100 * second + 1, "the write of 100 s left the window and was forgotten")
        // Request 1 was applied and is forgotten: settling it now would wrongly say "not applied".
        #expect(refusal(head.write(fence(1, sentAt: 99 * second), now: 201 * second))?.code == .settlementExpired)
        #expect(refusal(head.write(fence(1, sentAt: 104 * second), now: 201 * second))?.code == .settlementExpired, "within the clock skew")
        let unknownTime = WriteRequest(requestID: RequestID(high: 2, low: 1), type: .fence, key: try! Key("k"))
        #expect(refusal(head.write(unknownTime, now: 201 * second))?.code == .settlementExpired)
        // A write sent after the oldest remembered one is settled (and fenced).
        #expect(appended(head.write(fence(9, sentAt: 150 * second), now: 201 * second)).map(\.type) == [.fence])
        // Remembered ids are answered whatever the send time.
        #expect(head.write(fence(2, sentAt: 0), now: 202 * second) == [.committed([.init(requestID: RequestID(high: 2, low: 2), lsn: LSN(epoch: 1, seq: 2))])])

        // Restarted over a log whose older ids were not loaded: only writes from the oldest
        // loaded one on can be settled; over a log loaded from its start, all can.
        let restarted = ReplicaStateMachine(me: node("a"), configuration: chain(["a"]), lastLSN: LSN(epoch: 1, seq: 50),
                                            recentRequests: [.init(requestID: RequestID(high: 3, low: 1), lsn: LSN(epoch: 1, seq: 40), timestamp: 300 * second)])
        #expect(restarted.forgottenBefore == 300 * second)
        let whole = ReplicaStateMachine(me: node("a"), configuration: chain(["a"]), lastLSN: LSN(epoch: 1, seq: 1),
                                        recentRequests: [.init(requestID: RequestID(high: 3, low: 1), lsn: LSN(epoch: 1, seq: 1), timestamp: 300 * second)])
        #expect(whole.forgottenBefore == 0)
        var empty = ReplicaStateMachine(me: node("a"), configuration: chain(["a"]), lastLSN: LSN(epoch: 1, seq: 7))
        #expect(empty.forgottenBefore == .max, "no id known: everything before its next record")
        #expect(refusal(empty.write(fence(5, sentAt: 10 * second), now: 20 * second))?.code == .settlementExpired)
        _ = empty.write(put(6, "v"), now: 30 * second)
        #expect(empty.forgottenBefore == 30 * second)
    }

    @Test func aFenceCarriesNothing() {
        var head = ReplicaStateMachine(me: node("a"), configuration: chain(["a"]), lastLSN: .zero)
        var withValue = fence(1)
        withValue.value = [1]
        #expect(refusal(head.write(withValue, now: 1))?.code == .invalidArgument)
        #expect(head.lastAccepted == .zero)
    }
}
