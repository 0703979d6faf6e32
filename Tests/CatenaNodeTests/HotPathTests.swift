@testable import CatenaNode
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

    @Test("an outlet writes what was queued before the event loop ran in order, with one flush")
    func outletCoalesces() throws {
        let channel = EmbeddedChannel()
        let flushes = FlushCounter()
        try channel.pipeline.syncOperations.addHandler(flushes)
        let outlet = FrameOutlet(channel)
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
