"""The chat gateway face: serve agents over the Connic WebSocket protocol, and talk to them."""

from antiphon.chat.agents import Agent, AgentReply, Turn, demo_agent, load_agent
from antiphon.chat.client import ChatClient, Reply, open_chat
from antiphon.chat.gateway import ChatGateway, ChatSessionHandler, Connector, serve_chat
from antiphon.chat.reconnect import Reconnecting, ReconnectPolicy
from antiphon.proto.chat.run import HistoryEntry
from antiphon.proto.chat.settings import ChatSettings

__all__ = [
    "Agent",
    "AgentReply",
    "ChatClient",
    "ChatGateway",
    "ChatSessionHandler",
    "ChatSettings",
    "Connector",
    "HistoryEntry",
    "ReconnectPolicy",
    "Reconnecting",
    "Reply",
    "Turn",
    "demo_agent",
    "load_agent",
    "open_chat",
    "serve_chat",
]
