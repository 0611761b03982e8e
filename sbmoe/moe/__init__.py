"""The MoE core shared by SB-MoE and the LM testbed: routers, expert banks, dispatch, ReXMoE pools."""
