"""Text games behind one small interface (`TextGame`), picked by name with `make_game`.

Importing this package registers every family: TextWorld's (`tw-coin_collector`, `tw-treasure_hunter`,
`tw-cooking`, `tw-custom`), TextArena's (`frozenlake`, `sokoban`), the hidden-rule doors (`hidden-rule`, one
turn) and their multi-turn corridor (`hidden-rule-corridor`).
"""

from verl_oel.envs.base import (
    GameSettings,
    Outcome,
    StepResult,
    TextGame,
    Turn,
    list_games,
    make_game,
    register_game,
    render_turn_prompt,
    strip_thinking,
)
from verl_oel.envs.grid_games import (
    FrozenLake,
    FrozenLakeSettings,
    GridGameSettings,
    Sokoban,
    SokobanSettings,
)
from verl_oel.envs.hidden_rule import HiddenRuleGame, HiddenRuleSettings
from verl_oel.envs.hidden_rule_corridor import HiddenRuleCorridorGame, HiddenRuleCorridorSettings
from verl_oel.envs.textworld_games import (
    CoinCollector,
    CoinCollectorSettings,
    Cooking,
    CookingSettings,
    CustomWorld,
    CustomWorldSettings,
    TextWorldGame,
    TreasureHunter,
    TreasureHunterSettings,
)

__all__ = [
    "CoinCollector",
    "CoinCollectorSettings",
    "Cooking",
    "CookingSettings",
    "CustomWorld",
    "CustomWorldSettings",
    "FrozenLake",
    "FrozenLakeSettings",
    "GameSettings",
    "GridGameSettings",
    "HiddenRuleCorridorGame",
    "HiddenRuleCorridorSettings",
    "HiddenRuleGame",
    "HiddenRuleSettings",
    "Outcome",
    "Sokoban",
    "SokobanSettings",
    "StepResult",
    "TextGame",
    "TextWorldGame",
    "TreasureHunter",
    "TreasureHunterSettings",
    "Turn",
    "list_games",
    "make_game",
    "register_game",
    "render_turn_prompt",
    "strip_thinking",
]
