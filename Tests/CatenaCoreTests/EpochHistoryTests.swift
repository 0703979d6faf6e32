import CatenaCore
import Testing

@Suite("Epoch history")
struct EpochHistoryTests {
    /// A log as (epoch, seq) pairs, seq 1...n.
    func epochs(_ runs: [(epoch: UInt64, count: Int)]) -> [UInt64] {
        runs.flatMap { Array(repeating: $0.epoch, count: $0.count) }
    }

    func shared(_ history: EpochHistory, _ log: [UInt64]) async throws -> UInt64 {
        try await history.lastShared(myLastSeq: UInt64(log.count)) { (seq) throws(CatenaError) -> UInt64 in log[Int(seq) - 1] }
    }

    @Test func theEpochOfASeqIsTheLatestEpochStartingAtOrBeforeIt() {
        let h = EpochHistory([EpochStart(epoch: 1, firstSeq: 1), EpochStart(epoch: 2), EpochStart(epoch: 3, firstSeq: 101),
                              EpochStart(epoch: 4, firstSeq: 101), EpochStart(epoch: 5, firstSeq: 150)])
        #expect(h.epoch(atSeq: 0) == nil)
        #expect(h.epoch(atSeq: 1) == 1)
        #expect(h.epoch(atSeq: 100) == 1)
        #expect(h.epoch(atSeq: 101) == 4, "epoch 3 wrote nothing: epoch 4 started at the same seq")
        #expect(h.epoch(atSeq: 160) == 5)
        #expect(h.epoch(atSeq: 149) == 4)
        #expect(h.epoch(atSeq: 10_000) == 5)
        #expect(h.firstSeq(of: 2) == nil)
    }

    @Test func aLogThatIsAPrefixOfTheChainIsKeptWhole() async throws {
        let h = EpochHistory([EpochStart(epoch: 1, firstSeq: 1), EpochStart(epoch: 2, firstSeq: 51)])
        #expect(try await shared(h, epochs([(1, 50), (2, 10)])) == 60)
        #expect(try await shared(h, epochs([(1, 30)])) == 30)
    }

    @Test func anOldHeadsUncommittedWritesAreCut() async throws {
        // The old head wrote 1...55 in epoch 1; the new head (epoch 2) had only 1...52.
        let h = EpochHistory([EpochStart(epoch: 1, firstSeq: 1), EpochStart(epoch: 2, firstSeq: 53)])
        #expect(try await shared(h, epochs([(1, 55)])) == 52)
    }

    @Test func divergenceOverSeveralEpochsIsFoundBelowThemAll() async throws {
        // This log: epoch 1 to 10, epoch 3 (as head) 11...20. The chain: epoch 4 started at 8
        // (its head lacked 8...10), so everything from 8 on differs.
        let h = EpochHistory([EpochStart(epoch: 1, firstSeq: 1), EpochStart(epoch: 3, firstSeq: 11), EpochStart(epoch: 4, firstSeq: 8)])
        #expect(try await shared(h, epochs([(1, 10), (3, 10)])) == 7)
    }

    @Test func anEmptyOrUnknownHistorySharesNothing() async throws {
        #expect(try await shared(EpochHistory([]), epochs([(1, 5)])) == 0)
        #expect(try await shared(EpochHistory([EpochStart(epoch: 1)]), epochs([(1, 5)])) == 0)
        #expect(try await shared(EpochHistory([EpochStart(epoch: 1, firstSeq: 1)]), []) == 0)
    }

    @Test func aLogHoldsOnlyWhatTheChainWroteAsFarAsTheHistoryKnows() {
        // Epoch 2's head had 1...52 of epoch 1; epoch 3 has not said where it starts.
        let h = EpochHistory([EpochStart(epoch: 1, firstSeq: 1), EpochStart(epoch: 2, firstSeq: 53), EpochStart(epoch: 3)])
        #expect(h.holds(.zero))
        #expect(h.holds(LSN(epoch: 1, seq: 52)))
        #expect(!h.holds(LSN(epoch: 1, seq: 55)), "the old head's writes after 52 never committed")
        #expect(h.holds(LSN(epoch: 2, seq: 60)))
        #expect(h.holds(LSN(epoch: 1, seq: 1)))
        #expect(EpochHistory([EpochStart(epoch: 1)]).holds(LSN(epoch: 1, seq: 5)), "nothing known: nothing to cut")
        // A record of an epoch whose start this history has not learned: it cannot tell (a reply
        // sent before the master recorded the start can arrive after the epoch's first writes).
        #expect(h.holds(LSN(epoch: 3, seq: 55)))
        #expect(h.holds(LSN(epoch: 4, seq: 60)), "an epoch the history has not heard of yet")
        #expect(!h.holds(LSN(epoch: 2, seq: 50)), "below where its own epoch started: lost records")
        #expect(!EpochHistory(h.entries + [EpochStart(epoch: 4, firstSeq: 54)]).holds(LSN(epoch: 3, seq: 55)),
                "a later epoch started at or below it: the chain's record there is that epoch's")
        // The strict twin: provably the chain's, which needs the current epoch's start.
        #expect(h.isPrefix(.zero))
        #expect(!h.isPrefix(LSN(epoch: 1, seq: 52)), "epoch 3 may start below 52")
        let known = EpochHistory(h.entries.dropLast() + [EpochStart(epoch: 3, firstSeq: 70)])
        #expect(known.isPrefix(LSN(epoch: 1, seq: 52)))
        #expect(known.isPrefix(LSN(epoch: 2, seq: 60)))
        #expect(!known.isPrefix(LSN(epoch: 1, seq: 55)))
        #expect(!EpochHistory([EpochStart(epoch: 1)]).isPrefix(LSN(epoch: 1, seq: 5)), "nothing known: nothing proven")
    }

    @Test func aLaterEpochMayStartBelowAnEarlierOne() async throws {
        // Epoch 2's head wrote 11...20 and was replaced; epoch 3's head had only 1...7.
        let h = EpochHistory([EpochStart(epoch: 1, firstSeq: 1), EpochStart(epoch: 2, firstSeq: 11), EpochStart(epoch: 3, firstSeq: 8)])
        #expect(h.epoch(atSeq: 15) == 3, "the chain's records from 8 on are epoch 3's")
        #expect(try await shared(h, epochs([(1, 10), (2, 10)])) == 7)
        #expect(try await shared(h, epochs([(1, 7), (3, 5)])) == 12)
    }
}
