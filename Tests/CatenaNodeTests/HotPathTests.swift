@testable import CatenaNode
import CatenaCore
import CatenaNetwork
import CatenaWire
import NIOCore
import NIOEmbedded
import Synchronization
import Testing

@Suite("The write path's parts")
struct HotPathTests {
    private func frame(_ id: UInt64) -> Frame {
        Frame(type: .writeResult, flags: .reply, chainID: 1, requestID: id, epoch: 1, payload: ByteBuffer(bytes: [UInt8(id)]))
    }

    /// An outlet over an embedded channel that counts its flushes.
    private func outletOnEmbeddedChannel() throws -> (EmbeddedChannel, FlushCounter, FrameOutlet) {
        let channel = EmbeddedChannel()
        let flushes = FlushCounter()
        try channel.pipeline.syncOperations.addHandler(flushes)
        return (channel, flushes, FrameOutlet(channel))
    }

    @Test("an outlet writes what was queued before the event loop ran in order, with one flush")
    func outletCoalesces() throws {
        let (channel, flushes, outlet) = try outletOnEmbeddedChannel()
        for id in 1...5 { outlet.send(frame(UInt64(id))) }
        #expect(try channel.readOutbound(as: Frame.self) == nil, "nothing before the event loop runs")
        channel.embeddedEventLoop.run()
        var ids: [UInt64] = []
        while let f = try channel.readOutbound(as: Frame.self) { ids.append(f.requestID) }
        #expect(ids == [1, 2, 3, 4, 5])
        #expect(flushes.count == 1)
        // Later frames go in a flush of their own.
        outlet.send(frame(6))
        channel.embeddedEventLoop.run()
        #expect(try channel.readOutbound(as: Frame.self)?.requestID == 6)
        #expect(flushes.count == 2)
        _ = try channel.finish()
    }

    @Test("an outlet's replaceable slot keeps only the latest frame until the event loop runs, written after the turn's other frames")
    func outletReplaces() throws {
        let (channel, flushes, outlet) = try outletOnEmbeddedChannel()
        outlet.sendReplacing(frame(10))
        outlet.send(frame(1))
        outlet.sendReplacing(frame(11))
        outlet.send(frame(2))
        channel.embeddedEventLoop.run()
        var ids: [UInt64] = []
        while let f = try channel.readOutbound(as: Frame.self) { ids.append(f.requestID) }
        #expect(ids == [1, 2, 11])
        #expect(flushes.count == 1)
        // The slot is empty once written: the next turn writes only what came since.
        outlet.sendReplacing(frame(12))
        channel.embeddedEventLoop.run()
        ids = []
        while let f = try channel.readOutbound(as: Frame.self) { ids.append(f.requestID) }
        #expect(ids == [12])
        channel.embeddedEventLoop.run()
        #expect(try channel.readOutbound(as: Frame.self) == nil)
        _ = try channel.finish()
    }

    @Test("acknowledgements: none below one already sent, none after close, the latest of a burst in one frame")
    func ackSender() throws {
        let channel = EmbeddedChannel()
        let acks = AckSender(outlet: FrameOutlet(channel), chainID: 1)
        acks.send(LSN(epoch: 1, seq: 5), epoch: 1)
        acks.send(LSN(epoch: 1, seq: 3), epoch: 1)
        acks.send(LSN(epoch: 1, seq: 7), epoch: 1)
        channel.embeddedEventLoop.run()
        var sent: [LSN] = []
        while let f = try channel.readOutbound(as: Frame.self) {
            #expect(f.type == .acknowledge)
            sent.append(try LSNPayload.decode(f.payload))
        }
        #expect(sent == [LSN(epoch: 1, seq: 7)])
        acks.send(LSN(epoch: 1, seq: 6), epoch: 1)
        acks.close()
        acks.send(LSN(epoch: 1, seq: 9), epoch: 1)
        channel.embeddedEventLoop.run()
        #expect(try channel.readOutbound(as: Frame.self) == nil)
        _ = try channel.finish()
    }

    @Test("request slots: a taker waits while all are taken, a given slot goes to it, drain waits for the last", .timeLimit(.minutes(1)))
    func requestSlots() async {
        let slots = RequestSlots(limit: 2)
        await slots.take()
        await slots.take()
        let third = Task { await slots.take(); return true }
        try? await Task.sleep(for: .milliseconds(50))
        slots.give()
        #expect(await third.value)
        // Two taken again (the waiter got the slot given back).
        let drained = Mutex(false)
        let drain = Task {
            await slots.drain()
            drained.withLock { $0 = true }
        }
        try? await Task.sleep(for: .milliseconds(50))
        slots.give()
        try? await Task.sleep(for: .milliseconds(50))
        #expect(!drained.withLock { $0 }, "one request still in progress")
        slots.give()
        await drain.value
        #expect(drained.withLock { $0 })
    }
}

/// Counts flushes passing outward.
private final class FlushCounter: ChannelOutboundHandler, @unchecked Sendable {
    typealias OutboundIn = Frame
    typealias OutboundOut = Frame
    var count = 0
    func flush(context: ChannelHandlerContext) {
        count += 1
        context.flush()
    }
}
