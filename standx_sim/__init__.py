"""standx_sim: a local StandX Perps exchange for tests, `--simulate` runs and backtests.

Parts:
    clock.VirtualClock       now() / sleep() / advance_to(); sleeping never blocks.
    market.RecordedMarket    replay of PREFIX.bbo.csv.gz + PREFIX.trades.csv.gz files.
    market.SyntheticMarket   seeded random walk with jumps (volatility 0 = a quiet, flat market).
    presets.PRESETS          calm and volatile synthetic markets, figures measured from recordings.
    record                   `python -m standx_sim record`: StandX's public market stream written
                             as replayable PREFIX.bbo.csv.gz + PREFIX.trades.csv.gz files.
    symbols.SYMBOLS          the listed symbols (BTC-USD, ETH-USD, XAU-USD) and their rules
                             (SymbolSpec); a Simulator trades one of them (symbol=...).
    exchange.Exchange        the engine: orders, matching, positions, fees, uptime metering
                             (its docstring states the fill model: queue position, partial fills).
    delays.StandXTiming      when orders and cancels take effect: StandX-like seeded delays with
                             a tail of seconds, and a few orders rejected in matching.
    api.Api                  every endpoint of the contract with its checks, as one handler.
    faults.Faults            fault rules (5xx, HTML pages, malformed JSON, 429, stalls, slow
                             headers, accept-then-504, dropped connections).
    ratelimit.RateLimits     StandX's rate limits: a token bucket per account (20 requests at
                             once, ~22/s) and per client IP (50/s); over them, 429 + Retry-After.
                             On by default; Simulator(..., rate_limits=None) turns them off.
    transport.InProcessAdapter  a requests adapter calling the handler in-process.
    streams.StreamHub        StandX's WebSocket streams (sim.streams): the market stream
                             (price, depth_book, public_trade; after auth our order, position and
                             balance) and the order response stream (outcomes of REST orders sent
                             with x-session-id), as frames per connection; stream faults.
    streams.VirtualFeed      the streams in virtual time for the backtest: each frame delivered a
                             fixed latency after it was produced, deterministically.
    server.SimServer         the handler over HTTP on 127.0.0.1, plus the control endpoints, and
                             the streams as WebSockets on the same port (/ws-stream/v1, /ws-api/v1)
                             with pings, lifetime and StandX's per-IP connection limits.
    simulator.Simulator      wires them together; compresses answers (gzip or deflate, as the
                             CDN in front of StandX does) unless compress=False; switches the
                             exchange's own faults (token expiry and lifetime, clock skew, order
                             visibility delay, position answers that lag fills).

Minimal use:
    sim = Simulator(VirtualClock(start=1_767_657_600.0))
    session.mount("http://standx.sim", sim.adapter(latency_s=0.05))
    # point STANDX_AUTH_BASE_URL and STANDX_PERPS_BASE_URL at http://standx.sim

Command line: ``python -m standx_sim serve [--port N] [--market-data PREFIX ...] [--no-rate-limits] ...``
prints ``STANDX_SIM_URL=http://127.0.0.1:PORT`` first and serves until SIGINT/SIGTERM.

Control endpoints (HTTP server only, unauthenticated, JSON; errors are {"code", "message"}):
    GET  /_sim/account?address=0x..  {"address", "balance", "position": {qty, entry_price,
                                      realized_pnl, upnl} | null, "open_orders": [order...],
                                      "metrics": {...}}; 404 for an address never seen
    GET  /_sim/metrics?address=0x..  the metrics dict (Exchange.metrics; decimals as strings)
    GET  /_sim/market                {"time", "bid", "ask", "mark", "last"}
    POST /_sim/balance               {"address": "0x..", "balance": "123.4" | null (unfunded)}
    POST /_sim/price                 {"shift_bps": 5} or {"mid": "95000"} -> the new market
    POST /_sim/trade                 {"price": "95000.1", "qty": "0.01", "taker_side": "buy"|"sell"}
    POST /_sim/fill                  {"address": "0x..", "cl_ord_id": "..", "qty": "0.00123457"}: a taker
                                      trades qty (up to 8 decimals; less than what is left = a
                                      partial fill) against that resting order of ours, at its price
    POST /_sim/faults                {"kind", "path"?, "probability"?, "count"?, "after_s"?,
                                      "for_s"?, "status"?, "retry_after_s"?, "stall_s"?, "body"?}
                                      -> {"id"}; kinds in faults.py
    POST /_sim/faults/clear          {}
    POST /_sim/expire_tokens         {}
    POST /_sim/clock_skew            {"seconds": 45} (0 ends the skew)
    POST /_sim/compress              {"on": true|false}: compress answers for clients that accept it
    POST /_sim/token_lifetime        {"seconds": 120 | null}: logins from now on get tokens living at
                                      most that long (null: as long as asked)
    POST /_sim/visibility_delay      {"seconds": 4}: orders accepted from now on become visible that
                                      much later (cancels keep their delays)
    POST /_sim/position_lag          {"seconds": 1.5}: query_positions answers the position as it
                                      was that long ago (at most 300)
    POST /_sim/symbol_rules          {"price_tick_decimals": 0, "min_order_qty": "0.001", ...}: the
                                      traded symbol's rules change from now on (any field of
                                      query_symbol_info but symbol and assets; decimals as strings)
                                      -> the new query_symbol_info row
    GET  /_sim/streams               {"sockets": [{"path", "client", "address"}...], "limits": {...}}:
                                      the open stream sockets and the limits in force
    POST /_sim/streams/drop          {}: every stream socket ends abruptly (no close frame)
                                      -> {"sockets": n}
    POST /_sim/streams/close         {}: every stream socket is closed normally (1000) -> {"sockets": n}
    POST /_sim/streams/silence       {"seconds": 3}: the sockets send nothing (no frames, no pings)
                                      and read nothing that long; frames meanwhile are lost
    POST /_sim/streams/pause_data    {"seconds": 3}: price, depth_book and public_trade frames are
                                      lost that long (pings and user channels go on)
    POST /_sim/streams/garbage       {"text": "not json"}: one text frame, as is, to every socket
                                      -> {"sockets": n}
    POST /_sim/streams/limits        {"max_sockets_per_ip", "new_per_minute", "lifetime_s",
                                      "ping_interval_s", "pong_timeout_s"} (any of them; they apply
                                      to open sockets at once) -> the limits
"""
from .clock import VirtualClock
from .exchange import Exchange
from .faults import Faults
from .market import Market, RecordedMarket, SyntheticMarket
from .server import SimServer
from .simulator import Simulator
from .symbols import SYMBOLS, SymbolSpec
from .transport import InProcessAdapter

__all__ = ["VirtualClock", "Exchange", "SymbolSpec", "SYMBOLS", "Faults", "Market", "RecordedMarket",
           "SyntheticMarket", "SimServer", "Simulator", "InProcessAdapter"]
